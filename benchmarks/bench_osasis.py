#!/usr/bin/env python
"""OSASIS speed and memory: stage-1 seconds per iteration, total training time and peak memory at batch 8, and
stage-2 seconds per photo.

Two modes:

- ``real`` (default with ``--tiny``, or ``--iterations N`` with ``--full`` on a GPU): runs N true stage-1
  iterations of the official schedule (latent DDIM 200 steps, 20-step content sampling, encode over ddim50 to
  t0 = 500, 10 decode steps with one update each) and a stage-2 batch, and times them.
- ``components`` (``--full`` without ``--iterations``; what a CPU can afford): FFHQ-256 architectures with random
  weights (DiffAE UNet + encoder, latent MLP, SPN, CLIP ViT-B/32, LPIPS-VGG). Times one eps forward, one encoder
  pass and one complete training decode step (both branches, CLIP + LPIPS losses, backward, both Adam steps) at
  content batches 1 and 2, each decode step in a fresh process for its peak RSS, then extrapolates linearly to
  batch 8 with the per-iteration operation counts of spec §8.

    python benchmarks/bench_osasis.py --tiny
    python benchmarks/bench_osasis.py --full                      # CPU: components, extrapolated
    python benchmarks/bench_osasis.py --full --iterations 2       # GPU: real iterations at batch 8
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from styleforge.osasis.losses import CLIPEmbedder
from styleforge.osasis.models import DiffAEAutoencoder, LatentDDIMNet
from styleforge.osasis.pipeline import OSASISPipeline, StylizeSettings
from styleforge.osasis.tiny import TINY_DIFFAE, TINY_LATENT, TINY_SPN, reinit_zero_layers, tiny_clip
from styleforge.osasis.train import OSASISTrainer, TrainConfig, make_spn

# per stage-1 iteration (official settings, spec §8) and per stage-2 batch (spec §5)
LATENT_EVALS, CONTENT_EVALS, ENCODE_EVALS, DECODE_STEPS, ITERATIONS = 200, 20, 25, 10, 200
INFER_A_EVALS, INFER_B_EVALS = 50, 25


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return min(times)  # the least-disturbed run: the CPU here is shared


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def build(full: bool, device, seed: int = 0):
    torch.manual_seed(seed)
    if full:
        from transformers import CLIPConfig, CLIPModel

        from styleforge.metrics.lpips import LPIPS

        diffae, latent = DiffAEAutoencoder(), LatentDDIMNet()
        clip = CLIPModel(CLIPConfig())  # the ViT-B/32 shapes (patch 32, width 768, 12 layers, 512-d embeddings)
        lpips = LPIPS.build("vgg")
        spn = make_spn("time", False)
    else:
        from styleforge.metrics.lpips import LPIPS

        diffae, latent, clip = DiffAEAutoencoder(**TINY_DIFFAE), LatentDDIMNet(**TINY_LATENT), tiny_clip()
        lpips = LPIPS.build("vgg")
        spn = make_spn("time", False, **{k: v for k, v in TINY_SPN.items()})
    reinit_zero_layers(diffae)  # random weights that produce non-zero eps, as trained ones do
    return {"diffae": diffae.to(device).eval(), "latent": latent.to(device).eval(), "spn": spn.to(device),
            "clip": CLIPEmbedder(clip.to(device)), "lpips": lpips.to(device)}


def make_trainer(m, batch: int, device, out: Path, **kw) -> OSASISTrainer:
    size = m["diffae"].config.image_size
    g = torch.Generator().manual_seed(0)
    style = (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(device)
    photo = (style * 0.7).clamp(-1, 1)
    cfg = TrainConfig(batch_size=batch, checkpoint_every=0, sample_every=0, **kw)
    return OSASISTrainer(cfg, m["diffae"], m["latent"], m["clip"], m["lpips"], style, photo, out, spn=m["spn"])


# ------------------------------------------------------------------------------------------------ real mode


def bench_real(full: bool, device, iterations: int, batch: int, infer_batch: int, **train_kw) -> dict:
    m = build(full, device)
    with tempfile.TemporaryDirectory() as tmp:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        tr = make_trainer(m, batch, device, Path(tmp), iterations=iterations, plan="official", **train_kw)
        per_it = [timed(tr.train_iteration, device) for _ in range(iterations)]
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else rss_gib()
        pipe = OSASISPipeline(m["diffae"], tr.unet_b, tr.spn, spn_time_input=tr.config.spn_time_input)
        size = m["diffae"].config.image_size
        photos = torch.rand(infer_batch, 3, size, size, device=device) * 2 - 1
        t_apply = timed(lambda: pipe.stylize(photos, photos[:1], StylizeSettings(batch_size=infer_batch)), device)
    s_it = statistics.median(per_it[1:] if len(per_it) > 1 else per_it)
    return {"mode": "real", "s_per_iteration": s_it, "training_s": s_it * ITERATIONS, "peak_gib": peak,
            "s_per_photo": t_apply / infer_batch, "iterations_timed": iterations, "batch": batch, "infer_batch": infer_batch}


# ------------------------------------------------------------------------------------------------ components


def probe_step(batch: int, device, gradient_checkpointing: bool) -> dict:
    """One complete training decode step at content batch ``batch`` (run in its own process for peak RSS)."""
    m = build(True, device)
    with tempfile.TemporaryDirectory() as tmp:
        # 1-step encode / decode plans keep the set-up cheap; the timed decode step is the real one
        tr = make_trainer(m, batch, device, Path(tmp), encode_steps=2, decode_steps=2, plan="official",
                          latent_steps=1, content_steps=1, gradient_checkpointing=gradient_checkpointing)
        size = m["diffae"].config.image_size
        photos = torch.rand(batch, 3, size, size, device=device) * 2 - 1
        with torch.no_grad():
            z_in = tr.unet_a.encode(photos)
            e_in = tr.loss.embed(photos)
            x_in = torch.randn_like(photos)
        before = rss_gib() if device.type != "cuda" else torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        tr.unet_b.train()
        step = lambda: tr.decode_step(9, 450, 400, tr.x_style_t0, x_in, photos, z_in, e_in)  # noqa: E731
        cold = timed(step, device)  # first call: page faults of the activations, Adam state allocation
        t = timed(step, device)
        peak = rss_gib() if device.type != "cuda" else torch.cuda.max_memory_allocated() / 2**30
    return {"batch": batch, "step_s": t, "cold_step_s": cold, "rss_before_gib": before, "peak_gib": peak}


def bench_components(device, gradient_checkpointing: bool, batch: int, infer_batch: int) -> dict:
    """Times per image at batch 1, scaled by the number of images (UNet cost is linear in the batch on a CPU);
    peak memory from decode-step probes at content batches 1 and 2 (slope per content image)."""
    m = build(True, device)
    ae, lat, spn = m["diffae"], m["latent"], m["spn"]
    size = ae.config.image_size
    res = {}
    with torch.no_grad():
        x, z = torch.randn(1, 3, size, size, device=device), torch.randn(1, 512, device=device)
        res["fwd1"] = timed(lambda: ae(x, 500, z), device, repeats=2)
        res["enc1"] = timed(lambda: ae.encode(x), device, repeats=2)
        res["spn1"] = timed(lambda: spn(x, 5), device, repeats=2)
        res["clip1"] = timed(lambda: m["clip"](x), device, repeats=2)
        zl = torch.randn(batch, 512, device=device)
        res["latent"] = timed(lambda: lat(zl, 10), device, repeats=3)
    del m, ae, lat, spn
    probes = []
    for b in (1, 2):
        cmd = [sys.executable, __file__, "--probe-step", str(b), "--device", str(device)]
        if gradient_checkpointing:
            cmd.append("--gradient-checkpointing")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:  # e.g. killed for memory on a shared machine: report what was measured
            probes.append({"batch": b, "error": f"exit {done.returncode}", "step_s": None, "peak_gib": None})
            continue
        probes.append(json.loads(done.stdout.strip().splitlines()[-1]))
    # a decode step processes 1 style + b content images (forward and backward): the cheaper per-image rate
    rates = [p["step_s"] / (1 + p["batch"]) for p in probes if p["step_s"] is not None]
    step_b = min(rates) * (1 + batch)
    peak_b = (probes[0]["peak_gib"] + (batch - 1) * (probes[1]["peak_gib"] - probes[0]["peak_gib"])
              if probes[1]["peak_gib"] is not None else float("nan"))
    iteration = (LATENT_EVALS * res["latent"] + (CONTENT_EVALS + ENCODE_EVALS) * batch * res["fwd1"]
                 + batch * (res["enc1"] + res["clip1"]) + DECODE_STEPS * step_b)
    per_photo = (INFER_A_EVALS + INFER_B_EVALS) * res["fwd1"] + INFER_B_EVALS * res["spn1"] + res["enc1"]
    return {"mode": "components (extrapolated)", "s_per_iteration": iteration, "training_s": iteration * ITERATIONS,
            "peak_gib": peak_b, "s_per_photo": per_photo, "batch": batch, "measured": res, "probes": probes,
            "decode_step_s_at_batch": step_b}


def table(r: dict, device, label: str) -> str:
    rows = [
        ("stage-1 s / iteration", f"{r['s_per_iteration']:.2f}"),
        (f"stage-1 total, {ITERATIONS} iterations", f"{r['training_s'] / 60:.1f} min ({r['training_s'] / 3600:.2f} h)"),
        (f"peak memory, batch {r['batch']}", f"{r['peak_gib']:.2f} GiB ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})"),
        ("stage-2 s / photo", f"{r['s_per_photo']:.2f}"),
    ]
    out = [f"OSASIS {label} on {device} ({torch.get_num_threads()} threads), mode: {r['mode']}", "",
           "| quantity | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="FFHQ-256 architectures, random weights")
    size.add_argument("--tiny", action="store_true", help="tiny architectures (default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iterations", type=int, default=None, help="real stage-1 iterations to time (default: 3 tiny, components for --full)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--infer-batch", type=int, default=8)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--autocast", choices=("bf16", "fp16"), default=None)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--probe-step", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.probe_step is not None:
        print(json.dumps(probe_step(args.probe_step, device, args.gradient_checkpointing)))
        return 0
    extra = {"gradient_checkpointing": args.gradient_checkpointing, "autocast": args.autocast}
    if args.full and args.iterations is None:
        r = bench_components(device, args.gradient_checkpointing, args.batch_size, args.infer_batch)
    else:
        r = bench_real(args.full, device, args.iterations or 3, args.batch_size, args.infer_batch, **extra)
    print(table(r, device, "FFHQ-256 (random weights)" if args.full else "tiny"))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
