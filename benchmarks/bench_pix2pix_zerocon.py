"""Benchmark of one pix2pix-zeroCon edit: UNet evaluations, seconds and peak memory per configuration.

Default: the tiny test models on the CPU (32 px, seconds). ``--full``: the real SD 1.5 architecture (860 M UNet,
CLIP ViT-L/14 text tower, SD VAE) with random weights at 512 px, meant for a GPU. Every configuration runs in its
own subprocess so that peak memory is that configuration's own (CUDA: max allocated; CPU: peak RSS).

    python benchmarks/bench_pix2pix_zerocon.py                 # tiny models, CPU
    python benchmarks/bench_pix2pix_zerocon.py --full --steps 50 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def run_one(cfg: dict) -> dict:
    """One configuration, in this process: returns counts, seconds and peak memory."""
    import resource

    import torch

    from styleforge.diffusion.sampling import count_unet_calls
    from styleforge.pix2pix_zerocon import Pix2PixZeroConPipeline
    from styleforge.testing import full_size_components, tiny_components

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg["dtype"]]
    components = full_size_components("sd1") if cfg["full"] else tiny_components("sd1")
    pipe = Pix2PixZeroConPipeline(**components).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    size = cfg["size"] or pipe.default_resolution
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    direction = 0.1 * torch.randn(1, 77, pipe.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
    edit = dict(caption="a photo of a cat", direction=direction, lambda_cut=cfg["lambda_cut"], seed=0,
                num_inference_steps=cfg["steps"], size=size, output_type="latent")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    pipe(image, **dict(edit, num_inference_steps=1))  # warm-up: kernels, allocator, lazy imports
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    x0 = pipe.encode_images(pipe.preprocess(image, size))
    cond = pipe.encode_prompt("a photo of a cat")
    sync()
    with count_unet_calls(pipe.unet) as inv_counts:
        t0 = time.perf_counter()
        x_T = pipe.invert(x0, cond, cfg["steps"], generator=torch.Generator().manual_seed(0))
        sync()
        t_inv = time.perf_counter() - t0
    backward = {"n": 0}
    with count_unet_calls(pipe.unet) as edit_counts:
        t0 = time.perf_counter()
        out = pipe(image, inverted_latent=x_T, return_log=False,
                   callback=lambda i, t, info: backward.__setitem__("n", backward["n"] + bool(info["guided"])), **edit)
        sync()
        t_edit = time.perf_counter() - t0
    finite = bool(torch.isfinite(out.images).all())
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB (Linux)
    return dict(cfg, inversion_forwards=inv_counts["calls"], edit_forwards=edit_counts["calls"],
                edit_forward_rows=edit_counts["rows"], backwards=backward["n"], seconds_inversion=round(t_inv, 3),
                seconds_edit=round(t_edit, 3), seconds_total=round(t_inv + t_edit, 3), peak_gib=round(peak, 3),
                finite=finite, device_name=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="SD 1.5 architecture with random weights (512 px) instead of the tiny models")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: 50 full, 10 tiny)")
    parser.add_argument("--size", type=int, default=None, help="image side (default: the model's resolution)")
    parser.add_argument("--dtypes", nargs="+", default=None, help="precisions (default: fp32 and fp16 on cuda, fp32 and bf16 on cpu)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 avoids oversubscription on a shared machine)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:
        print("RESULT " + json.dumps(run_one(json.loads(args._one))))
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = args.dtypes or (["fp32", "fp16"] if device == "cuda" else ["fp32", "bf16"])
    steps = args.steps or (50 if args.full else 10)
    rows = []
    for dtype in dtypes:
        for method, lambda_cut in (("pix2pix-zero", 0.0), ("pix2pix-zeroCon", 1.0)):
            cfg = dict(full=args.full, device=device, dtype=dtype, steps=steps, size=args.size, threads=args.threads,
                       method=method, lambda_cut=lambda_cut)
            proc = subprocess.run([sys.executable, __file__, "--_one", json.dumps(cfg)], capture_output=True, text=True,
                                  env=dict(os.environ, HF_HUB_OFFLINE="1"))
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append(dict(cfg, error=tail))
                print(f"{method} {dtype}: failed: {tail}", file=sys.stderr)
                continue
            rows.append(json.loads(line[len("RESULT "):]))
    header = ("method", "dtype", "steps", "UNet fwd (inv)", "UNet fwd (edit)", "bwd", "s inversion", "s edit",
              "s total", "peak GiB", "finite")
    print(f"model: {'SD 1.5 architecture, random weights' if args.full else 'tiny test models'}; device: "
          f"{rows[0].get('device_name', device) if rows else device}; threads: {args.threads}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | {r['dtype']} | {r['steps']} | failed: {r['error'][:80]} |")
            continue
        print(f"| {r['method']} | {r['dtype']} | {r['steps']} | {r['inversion_forwards']} | {r['edit_forwards']} | "
              f"{r['backwards']} | {r['seconds_inversion']:.2f} | {r['seconds_edit']:.2f} | {r['seconds_total']:.2f} | "
              f"{r['peak_gib']:.2f} | {r['finite']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
