"""One command that times every diffusion method on a CUDA GPU, with and without the memory savers.

    python benchmarks/gpu_suite.py              # CUDA: the runs below, under 8 minutes on one H100/H200
    python benchmarks/gpu_suite.py --tiny       # the same runs on the tiny test models, on the CPU (a test)
    OUT=results/ python benchmarks/gpu_suite.py # also writes results/gpu_suite.json and results/gpu_suite.md

Full size means the real architectures with random weights (they time like trained ones): SD 1.5 at 512 px, SDXL
at 1024 px, DiffAE FFHQ-256 at 256 px. Each row is one run at the official step counts; "savers" is either none
(everything on the GPU) or ``--low-memory`` (model offload, VAE slicing and tiling, 1024-row attention chunks,
gradient checkpointing). The runs, chosen to fit 8 minutes with the model builds:

* Cross-Image Attention, SD 1.5 512 px, K=100, S=32: fp16 and bf16 without savers, fp16 with; the naive schedule
  (the official code's two batch-3 passes per guided step) beside the fp16 run. SDXL 1024 px: fp16 with and without
  savers.
* pix2pix-zeroCon, SD 1.5 512 px, 50 steps (inversion, reference and guided passes): fp16 and bf16, fp16 with
  savers; the naive schedule is the official pass order (the whole reference pass first, every step's maps held).
* PairCustomization inference, 50 PNDM steps with a random rank-64 style: SD 1.5 fp16/bf16 and with savers, SDXL
  fp16 with and without savers. Training: 10 iterations timed at 512 px (fp16 mixed precision), extrapolated to the
  official 750, with and without savers.
* OSASIS, DiffAE FFHQ-256: stylization of 8 photos (100 encode / 50 decode steps) fp16 and bf16, with savers; one
  stage-1 iteration at batch 8 (official settings, fp32 weights with bf16 autocast) with and without gradient
  checkpointing, extrapolated to the official 200 iterations.

Columns: seconds, peak GPU memory (the CUDA allocator's high-water mark; on the CPU the process's peak resident
set, which only grows), UNet row-evaluations (one row = one latent through the UNet), then the same three for the
naive/official schedule where the method has one. A run that would start after ``--budget`` seconds (400, so the
last run still ends within 8 minutes) is skipped and listed under the table; the SDXL runs come last for that
reason (estimated: SD 1.5 and OSASIS runs about 3 minutes, the SDXL builds and runs about 4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark helpers

LOW = {"low_memory": True}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device) -> float:
    from styleforge.runtime import peak_memory_mb

    return round(peak_memory_mb(device))


def _image(size: int, seed: int):
    return (np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8)


class Suite:
    def __init__(self, tiny: bool, device: torch.device, budget: float):
        self.tiny, self.device, self.budget = tiny, device, budget
        self.start = time.perf_counter()
        self.rows: list[dict] = []
        self.skipped: list[str] = []
        self._components: dict = {}

    # --------------------------------------------------------------------------------------- plumbing

    def components(self, family: str) -> dict:
        """One set of (random) weights per family, kept on the CPU between runs."""
        from styleforge.testing import full_size_components, tiny_components

        if family not in self._components:
            self._components[family] = (tiny_components if self.tiny else full_size_components)(family)
        return self._components[family]

    def pipeline(self, cls, family: str, dtype, savers: dict):
        comps = self.components(family)
        _clear(comps, dtype)
        pipe = cls(**comps)
        pipe.set_progress_bar_config(disable=True)
        if savers:
            pipe.enable_memory_savers(device=self.device, **savers)
        else:
            pipe.enable_memory_savers(device=self.device)  # plain: everything on the device, VAE savers off
        return pipe

    def size(self, family: str) -> int:
        return 32 if self.tiny else (512 if family == "sd1" else 1024)

    def run(self, method: str, model: str, dtype: torch.dtype, savers: dict, fn, naive=None, **info) -> None:
        """Time ``fn() -> unet rows``; ``naive`` likewise for the naive/official schedule."""
        label = f"{method} {model} {str(dtype).replace('torch.', '')} {'low-memory' if savers else 'none'}"
        elapsed = time.perf_counter() - self.start
        if elapsed > self.budget:
            self.skipped.append(label)
            return
        row = {"method": method, "model": model, "dtype": str(dtype).replace("torch.", ""),
               "savers": "low-memory" if savers else "none", **info}
        for key, f in (("", fn), ("naive_", naive)):
            if f is None:
                continue
            _reset_peak(self.device)
            _sync(self.device)
            t0 = time.perf_counter()
            try:
                rows = f()
            except Exception as e:  # one failed run (out of memory, fp16 NaN) must not stop the suite
                row[f"{key}error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            _sync(self.device)
            row[f"{key}seconds"] = round(time.perf_counter() - t0, 2)
            row[f"{key}peak_mib"] = _peak_mib(self.device)
            row[f"{key}unet_rows"] = rows
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    # --------------------------------------------------------------------------------------- methods

    def cross_image(self, family: str, dtype, savers: dict, naive: bool = False) -> None:
        from styleforge.cross_image import CrossImageAttentionPipeline
        from styleforge.diffusion.sampling import count_unet_calls

        pipe = self.pipeline(CrossImageAttentionPipeline, family, dtype, savers)
        size = self.size(family)
        K, S = (4, 1) if self.tiny else (100, 32)
        windows = dict(swap_range_full=(0, 3), swap_range_half=(0, 3)) if self.tiny else {}

        def once(rows_mode):
            def f():
                with count_unet_calls(pipe.unet) as counts:
                    pipe(_image(size, 0), _image(size, 1), "animal", num_inference_steps=K, skip_steps=S,
                         guidance_rows=rows_mode, adain="full", output_type="pt", **windows)
                return counts["rows"]
            return f

        self.run("cross-image", f"{family} {size}px", dtype, savers, once("output"),
                 naive=once("all") if naive else None, steps=f"K={K} S={S}")

    def pix2pix(self, dtype, savers: dict, naive: bool = False) -> None:
        from styleforge.diffusion.sampling import count_unet_calls
        from styleforge.pix2pix_zerocon import Pix2PixZeroConPipeline

        pipe = self.pipeline(Pix2PixZeroConPipeline, "sd1", dtype, savers)
        size = self.size("sd1")
        steps = 2 if self.tiny else 50
        width = pipe.text_encoder.config.hidden_size
        delta = 0.1 * torch.randn(1, 77, width, generator=torch.Generator().manual_seed(1))

        def once(mode):
            def f():
                with count_unet_calls(pipe.unet) as counts:
                    pipe(_image(size, 0), caption="a photo of a cat", direction=delta, num_inference_steps=steps,
                         seed=0, reference_mode=mode, output_type="np", cut_num_patches=8 if self.tiny else 256)
                return counts["rows"]
            return f

        self.run("pix2pix-zeroCon", f"sd1 {size}px", dtype, savers, once("interleaved"),
                 naive=once("stored") if naive else None, steps=f"{steps}")

    def pair(self, family: str, dtype, savers: dict) -> None:
        from bench_pair_customization import random_style

        from styleforge.pair_customization.pipeline import PairCustomizationPipeline

        pipe = self.pipeline(PairCustomizationPipeline, family, dtype, savers)
        pipe.load_style(random_style(pipe, 4 if self.tiny else 64), name="style")
        size = self.size(family)
        steps = 3 if self.tiny else 50

        def f():
            return pipe("a photo of a dog", num_inference_steps=steps, style_start_step=1 if self.tiny else 10,
                        height=size, width=size, output_type="pt").unet_rows

        self.run("pair inference", f"{family} {size}px", dtype, savers, f, steps=f"{steps}")
        pipe.adapters.remove()

    def pair_train(self, dtype, savers: dict) -> None:
        from styleforge.diffusion.pipeline import StyleforgePipeline
        from styleforge.diffusion.sampling import count_unet_calls
        from styleforge.pair_customization.train import PairCustomizationTrainer

        pipe = self.pipeline(StyleforgePipeline, "sd1", torch.float32, savers)  # the trainer casts (mixed precision)
        size, timed = self.size("sd1"), 2 if self.tiny else 10
        mp = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")
        trainer = PairCustomizationTrainer(pipe, style_word="ink", content_prompt="a photo of a sbu cat",
                                           resolution=size, iterations=timed, style_start=0, checkpoint_every=0,
                                           mixed_precision=mp, content_rank=4 if self.tiny else 64,
                                           style_rank=4 if self.tiny else 64,
                                           gradient_checkpointing=pipe.memory_savers.gradient_checkpointing)

        def f():
            with count_unet_calls(pipe.unet) as counts:
                trainer.train(_image(size, 0), _image(size, 1), None, progress=False)
            return counts["rows"]

        self.run("pair training", f"sd1 {size}px", dtype, savers, f, steps=f"{timed} it (x{750 // timed} = 750)")
        trainer.adapters.remove()

    def osasis(self, dtype, savers: dict) -> None:
        from styleforge.osasis.pipeline import OSASISPipeline, StylizeSettings
        from styleforge.osasis.train import make_unet_b

        m = self._osasis_models()
        pipe = OSASISPipeline(m["diffae"].to(self.device, dtype), make_unet_b(m["diffae"]).to(self.device, dtype),
                              m["spn"].to(self.device, dtype))
        if savers:
            pipe.enable_memory_savers(device=self.device, **savers)
        size = pipe.image_size
        n = 2 if self.tiny else 8
        photos = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        s = StylizeSettings(encode_steps=4, decode_steps=2) if self.tiny else StylizeSettings()
        plan = s.timestep_plan()

        def f():
            pipe.stylize(photos, photos[:1], s)
            return n * (len(plan.encode_transitions()) + 2 * len(plan.decode_transitions()))  # eps_A, then eps_B + SPN

        self.run("osasis stylize", f"diffae {size}px x{n}", dtype, savers, f, steps=f"{s.encode_steps}/{s.decode_steps}")

    def osasis_train(self, checkpointing: bool) -> None:
        import tempfile

        from bench_osasis import make_trainer

        m = self._osasis_models()
        for k in ("diffae", "latent", "spn", "clip", "lpips"):
            m[k] = m[k].to(self.device, torch.float32)
        batch = 2 if self.tiny else 8
        kw = dict(encode_steps=4, decode_steps=2, latent_steps=2, content_steps=2) if self.tiny else {}
        with tempfile.TemporaryDirectory() as tmp:
            trainer = make_trainer(m, batch, self.device, Path(tmp), iterations=1, gradient_checkpointing=checkpointing,
                                   autocast=None if self.tiny or self.device.type != "cuda" else "bf16", **kw)

            def f():
                trainer.train_iteration()
                return batch * 2 * len(trainer.plan.decode_transitions())  # content and style branches, eps_B rows

            self.run("osasis training", f"diffae 256px b{batch}" if not self.tiny else f"tiny b{batch}", torch.float32,
                     {"gradient_checkpointing": True} if checkpointing else {}, f, steps="1 it (x200)")

    def _osasis_models(self) -> dict:
        from bench_osasis import build

        if "osasis" not in self._components:
            self._components["osasis"] = build(not self.tiny, torch.device("cpu"))
        m = self._components["osasis"]
        _clear(m, None)
        return m


    # --------------------------------------------------------------------------------------- the plan

    def all(self) -> None:
        fp16, bf16 = torch.float16, torch.bfloat16
        if self.tiny:  # CPU half precision is emulated and slow: the check runs fp32, once per row kind
            fp16 = bf16 = None
        half = (fp16, bf16) if fp16 is not None else (torch.float32,)
        self.cross_image("sd1", half[0], {}, naive=True)
        for dtype in half[1:]:
            self.cross_image("sd1", dtype, {})
        self.cross_image("sd1", half[0], LOW)
        self.pix2pix(half[0], {}, naive=True)
        for dtype in half[1:]:
            self.pix2pix(dtype, {})
        self.pix2pix(half[0], LOW)
        for dtype in half:
            self.pair("sd1", dtype, {})
        self.pair("sd1", half[0], LOW)
        self.pair_train(half[0], {})
        self.pair_train(half[0], LOW)
        for dtype in half:
            self.osasis(dtype, {})
        self.osasis(half[0], LOW)
        fp16 = half[0]
        self.osasis_train(False)
        self.osasis_train(True)
        self._components.pop("sd1", None)  # free the host copy before SDXL's
        self.cross_image("sdxl", fp16, {})
        self.cross_image("sdxl", fp16, LOW)
        self.pair("sdxl", fp16, {})
        self.pair("sdxl", fp16, LOW)


def _clear(modules: dict, dtype) -> None:
    """Undo what a previous run installed on shared weights: offload hooks, checkpointing; back to the CPU."""
    from accelerate.hooks import remove_hook_from_module

    for m in modules.values():
        if isinstance(m, torch.nn.Module):
            remove_hook_from_module(m, recurse=True)
            if getattr(m, "is_gradient_checkpointing", False):
                m.disable_gradient_checkpointing()
            m.to("cpu") if dtype is None else m.to("cpu", dtype)


COLUMNS = ("method", "model", "dtype", "savers", "steps", "seconds", "peak_mib", "unet_rows", "naive_seconds",
           "naive_peak_mib", "naive_unet_rows", "error")


def markdown(rows: list[dict], skipped: list[str], device: str) -> str:
    head = ["method", "model", "dtype", "savers", "steps", "s", "peak MiB", "UNet rows", "naive s", "naive peak MiB",
            "naive UNet rows", "note"]
    lines = [f"device: {device}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        note = r.get("error") or r.get("naive_error") or ""
        lines.append("| " + " | ".join(str(r.get(c, "")) if c != "error" else note for c in COLUMNS) + " |")
    if skipped:
        lines += ["", "skipped (time budget): " + "; ".join(skipped)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny test models on the CPU (checks the suite end to end)")
    ap.add_argument("--budget", type=float, default=400.0, help="skip runs that would start after this many seconds")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_suite.json and gpu_suite.md ($OUT)")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_suite: no CUDA GPU here; run with --tiny to check the suite on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    if args.tiny:
        torch.set_num_threads(1)  # tiny models gain nothing from threads; a loaded CPU loses a lot
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the dtype casts between runs are deliberate
    suite = Suite(args.tiny, device, args.budget)
    suite.all()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (tiny models)"
    md = markdown(suite.rows, suite.skipped, name)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_suite.json").write_text(json.dumps({"device": name, "rows": suite.rows, "skipped": suite.skipped,
                                                        "seconds": round(time.perf_counter() - suite.start, 1)}, indent=2))
        (out / "gpu_suite.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
