"""Cross-Image Attention benchmark: UNet row-evaluations, seconds and peak memory per transfer.

    python benchmarks/bench_cross_image.py                 # tiny model, full schedule (K=100, S=32): counts + seconds
    python benchmarks/bench_cross_image.py --full          # SD 1.5 architecture, random weights, 512 px
    python benchmarks/bench_cross_image.py --full --device cuda --dtype fp16

Counts are per transfer. "official" is the official code's schedule: two batch-3 passes at every step (spec §3.5).
On a CPU, ``--full --max-unet-calls N`` times N full-size UNet calls and extrapolates instead of running all of it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from styleforge.cross_image import CrossImageAttentionPipeline
from styleforge.diffusion.sampling import count_unet_calls
from styleforge.runtime import peak_memory_mb, resolve_device, resolve_dtype
from styleforge.testing import full_size_components, tiny_components


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="SD 1.5 architecture (random weights) instead of the tiny model")
    ap.add_argument("--size", type=int, default=None, help="image size (default 512 full, 32 tiny)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--skip", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--chunk", type=int, default=None, help="attention query chunk size")
    ap.add_argument("--max-unet-calls", type=int, default=None, help="time this many full-size UNet calls and extrapolate")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    comps = full_size_components("sd1") if args.full else tiny_components("sd1")
    pipe = CrossImageAttentionPipeline(**comps).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    size = args.size or (512 if args.full else 32)
    rng = np.random.RandomState(0)
    s_img, a_img = ((rng.rand(size, size, 3) * 255).astype(np.uint8) for _ in range(2))
    K, S, N = args.steps, args.skip, args.steps - args.skip
    results = {"model": "sd15-architecture" if args.full else "tiny", "size": size, "steps": K, "skip": S,
               "device": str(device), "dtype": args.dtype}

    if args.max_unet_calls:  # time single UNet calls of the shapes the transfer uses, then extrapolate
        lat = torch.randn(3, 4, size // 8, size // 8, device=device, dtype=dtype)
        cond = pipe.encode_prompt("A photo of a animal")
        timings = {}
        for rows in (1, 2, 3):
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(args.max_unet_calls):
                    pipe.unet(lat[:rows] if rows <= 3 else lat, 500, **cond.repeat(rows).unet_kwargs())
            timings[rows] = (time.perf_counter() - start) / args.max_unet_calls
        guided = sum(1 for i in range(N) if 11 <= i)  # official windows: swaps from iteration 11
        ours = 2 * K * timings[2] + (N - guided) * timings[3] + guided * (timings[3] + timings[1])
        official = 2 * K * 2 * timings[1] + N * 2 * timings[3]
        results.update(seconds_per_unet_call=timings, est_seconds_ours=ours, est_seconds_official=official,
                       peak_memory_mb=peak_memory_mb(device))
    else:
        for mode in ("output", "all"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
            start = time.perf_counter()
            with count_unet_calls(pipe.unet) as counts:
                out = pipe(s_img, a_img, "animal", num_inference_steps=K, skip_steps=S, guidance_rows=mode,
                           attention_chunk_size=args.chunk, adain="full", output_type="latent")
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            inversion_rows = counts["rows"] - out.unet_rows
            results[mode] = {"seconds": round(seconds, 2), "unet_calls": counts["calls"], "unet_rows_total": counts["rows"],
                             "inversion_rows": inversion_rows, "denoising_rows": out.unet_rows,
                             "denoising_rows_per_step": round(out.unet_rows / N, 3),
                             "peak_memory_mb": round(peak_memory_mb(device))}
        results["official_code"] = {"inversion_rows": 2 * K * 2, "denoising_rows": 2 * 3 * N,
                                    "denoising_rows_per_step": 6.0}
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
