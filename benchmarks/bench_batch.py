#!/usr/bin/env python
"""Benchmarks of ``styleforge batch``.

1. ``region``: the bundled region model at ``--size`` (256 px) on N content x style jobs: jobs/s of one ``styleforge batch``
   process (start-up and model load included) against separate ``styleforge region apply`` processes (``--separate``
   of them are timed, the rest extrapolated). ``--no-save-strip`` for both.
2. ``forward``: what batching several region jobs through one forward would gain: RegionStylizer's tensor path
   on B images in one call against B calls of one image, at 256 px.
3. ``appearance``: Cross-Image Attention on a tiny random SD model, 1 structure x 4 appearances: UNet rows and
   seconds of one batch (the structure inverted once, through the inversion cache) against 4 separate commands
   (``--no-cache``, in this process, each loading the model as a command does).
4. ``scale``: the region batch in 1 process against 2 processes (``torchrun --nproc_per_node 2``), one torch
   thread per process, and 1 process with 2 threads.

    python benchmarks/bench_batch.py region --jobs 200 --separate 10
    python benchmarks/bench_batch.py forward
    python benchmarks/bench_batch.py appearance
    python benchmarks/bench_batch.py scale --jobs 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _env(threads: int | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def make_inputs(folder: Path, n_contents: int, n_styles: int) -> tuple[Path, Path]:
    """Distinct content and style files: crops and colour shifts of the example photos."""
    import numpy as np
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.png")) if "mask" not in p.name]
    for kind, n in (("content", n_contents), ("style", n_styles)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = photos[i % len(photos)]
            w, h = img.size
            k = 0.6 + 0.4 * ((i * 7) % 10) / 10
            box = (int((w - w * k) * ((i * 3) % 5) / 4), int((h - h * k) * ((i * 5) % 3) / 2))
            crop = img.crop((box[0], box[1], box[0] + int(w * k), box[1] + int(h * k))).resize((320, 256))
            arr = np.asarray(crop).astype(np.float32) * (0.8 + 0.04 * (i % 10)) + (i * 13) % 40
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / kind / f"{kind}{i:03d}.png")
    return folder / "content", folder / "style"


def _timed(command: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def bench_region(args) -> dict:
    n_styles = 10
    n_contents = max(1, args.jobs // n_styles)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cdir, sdir = make_inputs(tmp / "in", n_contents, n_styles)
        jobs = n_contents * n_styles
        batch_seconds = _timed([sys.executable, "-m", "styleforge", "batch", "region", "-o", str(tmp / "batch"),
                                "--content-dir", str(cdir), "--style-dir", str(sdir), "--no-progress", "--",
                                "--size", str(args.size), "--no-save-strip"], _env(args.threads))
        contents, styles = sorted(cdir.iterdir()), sorted(sdir.iterdir())
        separate = []
        for i in range(args.separate):
            separate.append(_timed([sys.executable, "-m", "styleforge", "region", "apply", "--content",
                                    str(contents[i % len(contents)]), "--style", str(styles[i % len(styles)]),
                                    "--size", str(args.size), "--no-save-strip", "-o", str(tmp / "sep" / f"{i}.png")],
                                   _env(args.threads)))
    per_call = sum(separate) / len(separate)
    result = {"jobs": jobs, "size": args.size, "batch_seconds": batch_seconds, "batch_jobs_per_s": jobs / batch_seconds,
              "separate_calls_timed": len(separate), "separate_seconds_per_call": per_call,
              "separate_jobs_per_s": 1 / per_call, "separate_seconds_extrapolated": per_call * jobs,
              "speedup": per_call * jobs / batch_seconds}
    return result


def bench_forward(args) -> dict:
    import torch

    from styleforge.region.inference import RegionStylizer, apply_edits

    torch.set_num_threads(args.threads or torch.get_num_threads())
    stylizer = RegionStylizer.from_pretrained(None).to("cpu")
    gen = torch.Generator().manual_seed(0)
    b = args.batch
    content = torch.rand(b, 3, 256, 320, generator=gen) * 2 - 1
    style = torch.rand(b, 3, 256, 256, generator=gen) * 2 - 1
    mask = (torch.rand(b, 1, 256, 320, generator=gen) > 0.5).float()

    def one_by_one():
        return torch.cat([apply_edits(stylizer.encoder, stylizer.generator, content[i:i + 1], [(style[i:i + 1], mask[i:i + 1])])
                          for i in range(b)])

    def together():
        return apply_edits(stylizer.encoder, stylizer.generator, content, [(style, mask)])

    timings = {}
    for name, fn in (("one_by_one", one_by_one), ("batched", together)):
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            out = fn()
        timings[name] = (time.perf_counter() - t0) / args.repeats
        timings[f"{name}_result"] = out
    diff = (timings.pop("one_by_one_result") - timings.pop("batched_result")).abs().max().item()
    return {"images": b, "seconds_one_by_one": timings["one_by_one"], "seconds_batched": timings["batched"],
            "speedup": timings["one_by_one"] / timings["batched"], "max_abs_difference": diff,
            "threads": torch.get_num_threads()}


def bench_appearance(args) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from styleforge import batch
    from styleforge.cli.main import main
    from styleforge.diffusion.sampling import count_unet_calls
    from styleforge.testing import save_tiny_model

    torch.set_num_threads(args.threads or torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["STYLEFORGE_CACHE"] = str(tmp / "cache")
        model = save_tiny_model(tmp / "tiny")
        (tmp / "s").mkdir(), (tmp / "a").mkdir()
        Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8)).save(tmp / "s" / "structure.png")
        for i in range(4):
            Image.fromarray((np.random.RandomState(1 + i).rand(64, 64, 3) * 255).astype(np.uint8)).save(tmp / "a" / f"a{i}.png")
        # the official 32-of-100 skip, scaled to the grid; 32 px keeps the tiny model's calls cheap
        options = {"model": str(model), "domain": "animal", "steps": args.steps, "skip_steps": round(0.32 * args.steps),
                   "size": 32, "adain": "full"}
        t0 = time.perf_counter()
        with count_unet_calls() as in_batch:
            summary = batch.run("appearance", tmp / "batch", content_dir=tmp / "s", style_dir=tmp / "a", options=options,
                                progress=False, echo=lambda s: None)
        batch_seconds = time.perf_counter() - t0
        assert summary.done == 4, summary.failures
        flags = sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in options.items()), [])
        t0 = time.perf_counter()
        with count_unet_calls() as separate:
            for i in range(4):
                assert main(["appearance", "--structure", str(tmp / "s" / "structure.png"), "--appearance",
                             str(tmp / "a" / f"a{i}.png"), "--no-cache", "-o", str(tmp / "sep" / f"{i}.png"), *flags]) == 0
        separate_seconds = time.perf_counter() - t0
        same = all((tmp / "sep" / f"{i}.png").read_bytes() == (tmp / "batch" / f"structure__a{i}.png").read_bytes()
                   for i in range(4))
    return {"steps": args.steps, "batch_unet_rows": in_batch["rows"], "batch_unet_calls": in_batch["calls"],
            "separate_unet_rows": separate["rows"], "separate_unet_calls": separate["calls"],
            "rows_saved": separate["rows"] - in_batch["rows"], "batch_seconds": batch_seconds,
            "separate_seconds": separate_seconds, "identical_outputs": same}


def bench_scale(args) -> dict:
    n_styles = 10
    n_contents = max(1, args.jobs // n_styles)
    result = {"jobs": n_contents * n_styles, "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cdir, sdir = make_inputs(tmp / "in", n_contents, n_styles)
        tail = ["batch", "region", "--content-dir", str(cdir), "--style-dir", str(sdir), "--no-progress", "--", "--size",
                str(args.size), "--no-save-strip", "--device", "cpu"]
        for name, launcher, threads in (
            ("1 process, 1 thread", [sys.executable, "-m", "styleforge"], 1),
            ("1 process, 2 threads", [sys.executable, "-m", "styleforge"], 2),
            ("2 processes, 1 thread each", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                            "-m", "styleforge"], 1),
        ):
            out = tmp / name.replace(" ", "_").replace(",", "")
            seconds = _timed([*launcher, tail[0], tail[1], "-o", str(out), *tail[2:]], _env(threads))
            files = sorted(p.name for p in out.glob("*.png"))
            result[name] = {"seconds": seconds, "jobs_per_s": result["jobs"] / seconds, "outputs": len(files)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("region", "forward", "appearance", "scale"))
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--size", type=int, default=256, help="region working size (region, scale)")
    parser.add_argument("--separate", type=int, default=10, help="separate region apply processes timed")
    parser.add_argument("--batch", type=int, default=8, help="images per forward (forward)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (appearance)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    result = {"region": bench_region, "forward": bench_forward, "appearance": bench_appearance, "scale": bench_scale}[args.what](args)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
