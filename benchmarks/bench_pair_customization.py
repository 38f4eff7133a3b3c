"""PairCustomization benchmark: training it/s, total time of the default schedule, peak memory, inference s/image.

    python benchmarks/bench_pair_customization.py                         # tiny SD 1.x + SDXL models, CPU
    python benchmarks/bench_pair_customization.py --full --family sd1     # SD 1.5 architecture, random weights
    python benchmarks/bench_pair_customization.py --full --family sdxl --device cuda

Training is timed separately for content-only iterations (before ``style_start``: one forward/backward) and joint
iterations (two), and the default schedule (750 iterations, style from 250: 250 + 500) is extrapolated from them,
so a few measured iterations suffice on a CPU. Inference is timed per sampling step with and without style
guidance (one style; the guided step adds one UNet pass) and scaled to ``--steps``; the first ``--lock`` steps are
unguided, as the default structure lock.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from styleforge.pair_customization import (PairCustomizationConfig, PairCustomizationPipeline, PairCustomizationTrainer,
                                           StyleAdapter, UNetAdapters)
from styleforge.pair_customization.adapters import orthogonal_downs
from styleforge.runtime import peak_memory_mb, resolve_device, resolve_dtype
from styleforge.testing import full_size_components, tiny_components


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_pipe(family: str, args, device) -> PairCustomizationPipeline:
    previous = torch.get_default_dtype()
    if args.build_dtype != "fp32":  # create the random weights directly in half precision (halves peak host memory)
        torch.set_default_dtype(resolve_dtype(args.build_dtype))
    try:
        comps = full_size_components(family) if args.full else tiny_components(family)
    finally:
        torch.set_default_dtype(previous)
    pipe = PairCustomizationPipeline(**comps).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_training(pipe, family: str, args, device) -> tuple[dict, StyleAdapter]:
    train_res = args.resolution or (512 if args.full else 32)
    rank = args.rank or (64 if args.full else 4)
    n = args.iterations
    defaults = PairCustomizationConfig()
    rng = np.random.RandomState(0)
    content, styled = ((rng.rand(train_res, train_res, 3) * 255).astype(np.uint8) for _ in range(2))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = PairCustomizationTrainer(pipe, content_rank=rank, style_rank=rank, resolution=train_res,
                                       iterations=2 * n + 1, style_start=n + int(args.warmup),
                                       mixed_precision=args.mixed_precision,
                                       gradient_checkpointing=args.gradient_checkpointing)
    trainer.set_pair(content, styled)
    if args.phase == "train":  # prompts are encoded once: the text encoders' memory can go (host-RAM-bound CPU runs)
        for encoder in (pipe.text_encoder, pipe.text_encoder_2):
            if encoder is not None:
                encoder.to_empty(device="meta")
    if args.warmup:
        trainer.train_iteration()  # warm-up (allocations, kernels)
    times = []
    for _ in range(2 * n):
        sync(device)
        start = time.perf_counter()
        trainer.train_iteration()
        sync(device)
        times.append(time.perf_counter() - start)
    t_content, t_joint = float(np.mean(times[:n])), float(np.mean(times[n:]))
    total = defaults.style_start * t_content + (defaults.iterations - defaults.style_start) * t_joint
    result = {
        "mixed_precision": trainer.amp_dtype and str(trainer.amp_dtype).replace("torch.", "") or "fp32",
        "gradient_checkpointing": args.gradient_checkpointing,
        "train_resolution": train_res, "rank": rank, "measured_iterations": 2 * n,
        "train_s_per_content_iteration": t_content, "train_s_per_joint_iteration": t_joint,
        "train_it_per_s_joint": 1 / t_joint,
        "train_total_s_default_schedule": total,
        "train_peak_memory_mb": peak_memory_mb(device),
        "adapted_layers": len(trainer.adapters.names),
        "trainable_params": sum(p.numel() for p in trainer.optimizer.param_groups[0]["params"]),
    }
    style = trainer.style_adapter()
    trainer.adapters.remove()
    return result, style


def random_style(pipe, rank: int) -> StyleAdapter:
    """A style with orthonormal A and random B (inference cost does not depend on the values)."""
    probe = UNetAdapters(pipe.unet)
    probe.remove()
    _, downs = orthogonal_downs([layer.in_features for layer in probe.layers], rank, rank)
    gen = torch.Generator().manual_seed(0)
    tensors = {name: (downs[n], torch.randn(m, rank, generator=gen) * 0.01) for name, (n, m) in probe.widths.items()}
    return StyleAdapter(tensors, {"family": pipe.family, "style_word": "watercolor", "alpha": float(rank)})


def bench_inference(pipe, style: StyleAdapter, args, device) -> dict:
    pipe.load_style(style, "bench")
    size = args.size or (pipe.default_resolution if args.full else 32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    per_step = {}
    k = args.timed_steps
    for label, scale in (("plain_cfg", 0.0), ("style_guidance", 3.0)):
        if args.warmup:
            pipe("a photo of a dog", style_scale=scale, num_inference_steps=2, style_start_step=0, height=size,
                 width=size, output_type="latent")
        sync(device)
        start = time.perf_counter()
        pipe("a photo of a dog", style_scale=scale, num_inference_steps=k, scheduler="ddim", style_start_step=0,
             height=size, width=size, output_type="latent")
        sync(device)
        per_step[label] = (time.perf_counter() - start) / k
    start = time.perf_counter()
    pipe.decode_latents(torch.zeros(1, 4, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor, device=device,
                                    dtype=pipe.unet.dtype))
    sync(device)
    decode = time.perf_counter() - start
    steps, lock = args.steps, min(args.lock, args.steps)
    return {
        "inference_dtype": str(pipe.unet.dtype).replace("torch.", ""),
        "inference_size": size, "inference_steps": steps, "structure_lock_steps": lock,
        "inference_s_per_step_plain": per_step["plain_cfg"], "inference_s_per_step_styled": per_step["style_guidance"],
        "inference_s_per_image_plain": steps * per_step["plain_cfg"] + decode,
        "inference_s_per_image_styled": lock * per_step["plain_cfg"] + (steps - lock) * per_step["style_guidance"] + decode,
        "inference_peak_memory_mb": peak_memory_mb(device),
    }


def bench_family(family: str, args, device) -> dict:
    pipe = build_pipe(family, args, device)
    result = {"family": family, "model": f"{family}-architecture" if args.full else "tiny", "device": str(device)}
    style = None
    if args.phase in ("both", "train"):
        train_result, style = bench_training(pipe, family, args, device)
        result.update(train_result)
    if args.phase in ("both", "infer"):
        if style is None:
            if args.mixed_precision in ("fp16", "bf16"):  # inference in the precision training would have used
                pipe.unet.to(resolve_dtype(args.mixed_precision))
                for encoder in (pipe.text_encoder, pipe.text_encoder_2):
                    if encoder is not None:
                        encoder.to(resolve_dtype(args.mixed_precision))
            style = random_style(pipe, args.rank or (64 if args.full else 4))
        result.update(bench_inference(pipe, style, args, device))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="real SD 1.5 / SDXL architectures (random weights)")
    ap.add_argument("--family", choices=("sd1", "sdxl", "both"), default="both")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per phase (content-only, joint)")
    ap.add_argument("--resolution", type=int, default=None, help="training resolution (default 512 full, 32 tiny)")
    ap.add_argument("--rank", type=int, default=None, help="content and style rank (default 64 full, 4 tiny)")
    ap.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"))
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--size", type=int, default=None, help="inference size (default: the model's resolution)")
    ap.add_argument("--steps", type=int, default=50, help="sampling steps per image (extrapolated)")
    ap.add_argument("--timed-steps", type=int, default=5, help="sampling steps actually timed")
    ap.add_argument("--lock", type=int, default=10, help="structure-lock steps without style guidance")
    ap.add_argument("--build-dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                    help="dtype the random weights are created in (use with --mixed-precision of the same kind)")
    ap.add_argument("--warmup", type=int, choices=(0, 1), default=1, help="untimed warm-up iteration and steps (0 on slow CPUs)")
    ap.add_argument("--phase", choices=("both", "train", "infer"), default="both",
                    help="train or infer alone (separate processes keep host memory low on CPUs)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = resolve_device(args.device)
    families = ("sd1", "sdxl") if args.family == "both" else (args.family,)
    results = [bench_family(f, args, device) for f in families]
    for r in results:
        print(json.dumps(r, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
