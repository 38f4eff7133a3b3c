"""CPU peak memory and time of each memory saver, per method, on the full-size architectures (random weights).

    python benchmarks/bench_memory.py                         # every method, its savers, one process per run
    python benchmarks/bench_memory.py --methods cia,pix2pix --json mem.json --markdown mem.md

Each run is one child process (so the peak is that run's alone: ``os.wait4`` returns the child's ``ru_maxrss``),
with one torch thread, at 512 px on the SD 1.5 architecture (OSASIS: DiffAE FFHQ-256 at 256 px), fp32, doing one
denoising step or one training step:

* ``cia``: Cross-Image Attention, one denoising step from given inversions (K=2, S=1) with the swap, appearance
  guidance and AdaIN active, then the decode of the three rows;
* ``pix2pix``: pix2pix-zeroCon, one step from a given x_T: reference step, guided step (forward + backward through
  the UNet with both losses), its CFG step, decode of edit and reference;
* ``pair``: PairCustomization inference, one style-guided step (CFG + one style row) and the decode;
* ``pair-train``: one PairCustomization training iteration (content and style steps, forward + backward);
* ``osasis``: OSASIS stylization of one photo (2 encode steps, 1 decode step);
* ``osasis-train``: one OSASIS stage-1 iteration at batch 1 (1 decode step; CLIP ViT-B/32 and LPIPS-VGG losses).

"resident" is the child's peak resident set; "working" subtracts what the process held after building the models
(the weights), i.e. what the savers can act on when there is no GPU. The children run with glibc's mmap threshold
fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so every tensor buffer is its own mapping and goes back to the system
when freed: the resident peak is then the peak of live tensors (what a GPU's ``max_memory_allocated`` reports), not
of a heap that keeps freed activations (with glibc's adaptive threshold two phases that never overlap were summed).
"peak in" names the phase that set the peak (a sampler thread reads the resident set every 2 ms; the phases are the
forwards of the models and the backward). Offload cannot lower a CPU's resident set (the
weights stay in the same RAM), so on the CPU it shows up only as its time cost; on a GPU it removes the weights
from the card (``benchmarks/gpu_suite.py`` measures that).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = {
    "cia": {"default": {}, "chunk": {"attention_chunk_size": 1024}, "vae-slicing": {"vae_slicing": True},
            "low-memory": {"low_memory": True}},
    "pix2pix": {"default": {}, "checkpointing": {"gradient_checkpointing": True}, "low-memory": {"low_memory": True}},
    "pair": {"default": {}, "low-memory": {"low_memory": True},
             "low-memory, 256 px tiles": {"low_memory": True, "vae_tile_size": 256}},  # tiling approximate
    "pair-train": {"default": {}, "checkpointing": {"gradient_checkpointing": True}, "low-memory": {"low_memory": True}},
    "osasis": {"default": {}, "low-memory": {"low_memory": True}},
    "osasis-train": {"default": {}, "low-memory": {"low_memory": True}},  # oneshot train: = --gradient-checkpointing
}


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _image(size: int, seed: int):
    import numpy as np

    return (np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8)


def _sd_pipe(cls, savers: dict):
    from styleforge.testing import full_size_components

    pipe = cls(**full_size_components("sd1"))
    pipe.set_progress_bar_config(disable=True)
    if savers:
        pipe.enable_memory_savers(device="cpu", **savers)
    return pipe


def _random_inversion(seed: int):
    import torch

    from styleforge.diffusion.inversion import EDIT_FRIENDLY, Inversion

    g = torch.Generator().manual_seed(seed)
    return Inversion(EDIT_FRIENDLY, torch.randn(3, 4, 64, 64, generator=g), torch.tensor([501, 1]),
                     torch.randn(2, 4, 64, 64, generator=g), num_inference_steps=2)


def run_cia(savers: dict):
    from styleforge.cross_image import CrossImageAttentionPipeline

    pipe = _sd_pipe(CrossImageAttentionPipeline, savers)
    return pipe, lambda: pipe(_image(512, 0), _image(512, 1), "animal", num_inference_steps=2, skip_steps=1,
                              swap_range_full=(0, 2), swap_range_half=(0, 2), guidance_range=(0, 2), adain="full",
                              adain_range=(0, 2), structure_inversion=_random_inversion(0),
                              appearance_inversion=_random_inversion(1), output_type="pt")


def run_pix2pix(savers: dict):
    import torch

    from styleforge.pix2pix_zerocon import Pix2PixZeroConPipeline

    pipe = _sd_pipe(Pix2PixZeroConPipeline, savers)
    x_T = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    delta = 0.1 * torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1))
    return pipe, lambda: pipe(_image(512, 0), caption="a photo of a cat", direction=delta, num_inference_steps=1,
                              inverted_latent=x_T, seed=0, output_type="np")


def run_pair(savers: dict):
    from styleforge.pair_customization.pipeline import PairCustomizationPipeline

    from bench_pair_customization import random_style  # this folder is on the path when run as a script

    pipe = _sd_pipe(PairCustomizationPipeline, savers)
    pipe.load_style(random_style(pipe, 64), name="style")
    return pipe, lambda: pipe("a photo of a dog", style_scale=3.0, num_inference_steps=1, style_start_step=0,
                              scheduler="ddim", output_type="pt")


def run_pair_train(savers: dict):
    from styleforge.diffusion.pipeline import StyleforgePipeline
    from styleforge.pair_customization.train import PairCustomizationTrainer

    pipe = _sd_pipe(StyleforgePipeline, savers)
    trainer = PairCustomizationTrainer(pipe, style_word="ink", content_prompt="a photo of a sbu cat", iterations=1,
                                       style_start=0, checkpoint_every=0,
                                       gradient_checkpointing=pipe.memory_savers.gradient_checkpointing)
    return pipe, lambda: trainer.train(_image(512, 0), _image(512, 1), None, progress=False)


def _osasis_models():
    import torch

    from styleforge.osasis.models import DiffAEAutoencoder
    from styleforge.osasis.tiny import reinit_zero_layers
    from styleforge.osasis.train import make_spn, make_unet_b

    torch.manual_seed(0)
    diffae = reinit_zero_layers(DiffAEAutoencoder()).eval()
    return diffae, make_unet_b(diffae), make_spn("time", False)


def run_osasis(savers: dict):
    import torch

    from styleforge.osasis.pipeline import OSASISPipeline, StylizeSettings

    unet_a, unet_b, spn = _osasis_models()
    pipe = OSASISPipeline(unet_a, unet_b, spn)
    if savers:
        pipe.enable_memory_savers(device="cpu", **savers)
    photo = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return pipe, lambda: pipe.stylize(photo, photo, StylizeSettings(encode_steps=4, decode_steps=2, t0_ratio=0.5))


def run_osasis_train(savers: dict):
    import tempfile
    from pathlib import Path

    import torch
    from transformers import CLIPConfig, CLIPModel

    from styleforge.diffusion.memory import MemorySavers
    from styleforge.metrics.lpips import LPIPS
    from styleforge.osasis.losses import CLIPEmbedder
    from styleforge.osasis.models import LatentDDIMNet
    from styleforge.osasis.train import OSASISTrainer, TrainConfig

    unet_a, _, spn = _osasis_models()
    clip, lpips = CLIPEmbedder(CLIPModel(CLIPConfig())), LPIPS.build("vgg")
    style = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = TrainConfig(batch_size=1, iterations=1, decode_steps=2, encode_steps=4, latent_steps=2, content_steps=2,
                      checkpoint_every=0, sample_every=0,
                      gradient_checkpointing=MemorySavers.from_options(**savers).gradient_checkpointing)
    out = Path(tempfile.mkdtemp())
    trainer = OSASISTrainer(cfg, unet_a, LatentDDIMNet(), clip, lpips, style, style * 0.7, out, spn=spn)
    return trainer, trainer.train_iteration


RUNNERS = {"cia": run_cia, "pix2pix": run_pix2pix, "pair": run_pair, "pair-train": run_pair_train,
           "osasis": run_osasis, "osasis-train": run_osasis_train}


class PhaseSampler:
    """The peak resident set per phase: forward hooks name the model running, ``backward`` covers autograd."""

    def __init__(self):
        self.phase, self.peaks, self._stop = "other", {}, False

    def watch(self, modules: dict) -> None:
        import torch

        for name, module in modules.items():
            module.register_forward_pre_hook(lambda m, a, name=name: self._enter(name + (" (grad)" if torch.is_grad_enabled() else "")))
            module.register_forward_hook(lambda m, a, o: self._enter("other"))
        for owner, attr in ((torch.autograd, "grad"), (torch.Tensor, "backward")):
            setattr(owner, attr, self._labelled(getattr(owner, attr), "backward"))

    def _enter(self, phase: str) -> None:
        self._sample()
        self.phase = phase

    def _labelled(self, fn, phase: str):
        def run(*args, **kwargs):
            before, self.phase = self.phase, phase
            try:
                return fn(*args, **kwargs)
            finally:
                self._enter(before)
        return run

    def _sample(self) -> None:
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), _rss_mib())

    def start(self) -> None:
        import threading

        def loop():
            while not self._stop:
                self._sample()
                time.sleep(0.002)
        threading.Thread(target=loop, daemon=True).start()

    def top(self) -> str:
        self._stop = True
        return max(self.peaks, key=self.peaks.get) if self.peaks else ""


def _phase_modules(obj) -> dict:
    """The models whose forwards name a phase: the VAE's halves, the UNet(s), the text encoder, OSASIS's nets."""
    import torch

    found = {}
    vae = getattr(obj, "vae", None)
    if vae is not None:
        found.update({"vae encode": vae.encoder, "vae decode": vae.decoder})
    for name in ("unet", "unet_a", "unet_b", "text_encoder", "spn", "clip"):
        module = getattr(obj, name, None)
        if isinstance(module, torch.nn.Module):
            found[name.replace("_", " ")] = module
    return found


def child(method: str, config: str) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    obj, fn = RUNNERS[method](CONFIGS[method][config])
    sampler = PhaseSampler()
    sampler.watch(_phase_modules(obj))
    loaded = _rss_mib()
    sampler.start()
    start = time.perf_counter()
    with torch.enable_grad() if method.endswith("train") else torch.no_grad():
        fn()
    print(json.dumps({"seconds": time.perf_counter() - start, "loaded_mib": loaded, "peak_in": sampler.top()}))


def run_child_and_wait(method: str, config: str, timeout: int) -> dict:
    """Start the child and reap it with ``os.wait4`` so its own ``ru_maxrss`` (peak resident set) comes back."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--child", method, config], stdout=out, stderr=err,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"})
        start = time.monotonic()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                return {"method": method, "config": config, "error": f"timed out after {timeout} s"}
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            return {"method": method, "config": config, "error": (err.read().strip().splitlines() or ["?"])[-1][:300]}
        data = json.loads(out.read().strip().splitlines()[-1])
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    return {"method": method, "config": config, "seconds": round(data["seconds"], 1), "peak_mib": round(peak),
            "loaded_mib": round(data["loaded_mib"]), "working_mib": round(peak - data["loaded_mib"]),
            "peak_in": data["peak_in"]}


def table(rows: list[dict]) -> str:
    lines = ["| method | savers | peak resident (MiB) | working set above weights (MiB) | vs default | peak in | seconds | time vs default |",
             "|---|---|---|---|---|---|---|---|"]
    base = {r["method"]: r for r in rows if r["config"] == "default" and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['config']} | error: {r['error']} | | | | | |")
            continue
        b = base.get(r["method"])
        work = f"{r['working_mib'] / b['working_mib']:.2f}" if b and b["working_mib"] > 0 else ""
        speed = f"{r['seconds'] / b['seconds']:.2f}" if b else ""
        lines.append(f"| {r['method']} | {r['config']} | {r['peak_mib']} | {r['working_mib']} | {work} | "
                     f"{r.get('peak_in', '')} | {r['seconds']} | {speed} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--configs", default=None, help="only these saver configurations (e.g. default,low-memory)")
    ap.add_argument("--runs", default=None, help="explicit METHOD:CONFIG list instead (e.g. cia:default,cia:low-memory)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "CONFIG"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    only = set(args.configs.split(",")) if args.configs else None
    runs = [tuple(r.split(":")) for r in args.runs.split(",")] if args.runs else [
        (m, c) for m in args.methods.split(",") for c in CONFIGS[m] if not only or c in only]
    rows = []
    for method, config in runs:
        r = run_child_and_wait(method, config, args.timeout)
        print(json.dumps(r), flush=True)
        rows.append(r)
    md = table(rows)
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
