#!/usr/bin/env python
"""Benchmarks of the region-wise stylizer.

1. ``speed``: training iterations/s and inference ms per image for each preset (CPU here; CUDA when present).
   Training speed is measured on random data at the preset's resolution and batch size.
2. ``synthetic``: the procedural "layout x palette" scenes of spec §7.3, where every swap has an exact ground
   truth. Trains ``cpu64`` for a fixed budget, then reports region-swap PSNR against the ground truth,
   reconstruction PSNR and background leakage (PSNR outside the mask against the reconstruction) for the
   method (feature composite) beside the pixel-composite and content-code-composite baselines, each also with
   --paste-back (default margin of one feature cell, and margin 0), and the floor of returning A unchanged.
   ``--set w_cc=0 w_ca=0`` trains the SwapAE ablation
   (any TrainConfig field can be set, e.g. ``--set style_gain=16 n_crop=8 n_ref=8``, or
   ``--set content_channels=2``, the reference 256 px model's content bottleneck ratio of 1/96 of the pixels);
   ``--save-model`` keeps the trained model, ``--model`` re-evaluates one without training.
   Note: the exact answer is itself a pixel composite M·T + (1-M)·A, so with a perfect global swap the pixel
   baseline is exact. To separate where each composition gains or loses, the figures are also given for the
   mask's interior and for a band around its border, and against "fading" answers whose style blends in over a
   Gaussian of σ px across the border (``--fades``), the seamless edit the paper's feature composition is for.
3. ``bundled``: the shipped model on held-out photos (every ordered content/style pair): reconstruction PSNR,
   leakage outside the mask, how far the masked region's colour statistics move toward the style image's, and the
   same for the whole image under global transfer.

    python benchmarks/bench_region.py speed --presets test cpu64 gpu128 ref256
    python benchmarks/bench_region.py synthetic --iterations 2500 --threads 1 --save-model runs/syn
    python benchmarks/bench_region.py bundled --heldout data/region/heldout
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from styleforge.region import inference as inf
from styleforge.region.masks import dilate_mask, feather_mask, random_masks
from styleforge.region.presets import get_preset


def psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR on the 0-255 scale of images in [-1, 1] (optionally over the pixels where mask == 1)."""
    x, y = (x.clamp(-1, 1) + 1) * 127.5, (y.clamp(-1, 1) + 1) * 127.5
    err = (x - y).pow(2)
    if mask is not None:
        m = mask.expand_as(err)
        mse = (err * m).sum() / m.sum().clamp_min(1)
    else:
        mse = err.mean()
    return float("inf") if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse.item()))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------- speed


def bench_speed(presets, device, train_iters: int, infer_iters: int, batch_override: int | None, inference_only=False) -> list[dict]:
    from styleforge.region.model import RegionEncoder, RegionGenerator
    from styleforge.region.train import RegionTrainer, TrainConfig

    rows = []
    for name in presets:
        preset = get_preset(name)
        res = preset["encoder"]["image_size"]
        batch = batch_override or preset["train"]["batch_size"]
        images = [torch.randint(0, 256, (3, res, res), dtype=torch.uint8) for _ in range(8)]
        if inference_only:  # no discriminators, optimisers or activations kept for backward: fits in little memory
            enc = RegionEncoder(**preset["encoder"]).to(device).eval().requires_grad_(False)
            gen = RegionGenerator(**preset["generator"]).to(device).eval().requires_grad_(False)
            row = {"preset": name, "device": device.type}
            rows.append(_bench_inference(row, enc, gen, res, device, infer_iters))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(data=tmp, output=tmp, preset=name, batch_size=batch, progress=False,
                              device=device.type, crop_scale=(1.0, 1.0), reg_interval=16)
            trainer = RegionTrainer(cfg, images=images)
            trainer.train_step(1)  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            trainer.train_step(0)  # a step with lazy R1 and L_CC/L_CA (both fire every 16 steps by default)
            _sync(device)
            full_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for step in range(2, 2 + train_iters):
                trainer.train_step(step)  # plain steps
            _sync(device)
            plain_s = (time.perf_counter() - t0) / train_iters
            train_s = plain_s + (full_s - plain_s) / 16  # amortised over K = r1_interval = 16
        enc, gen = trainer.encoder_ema.eval(), trainer.generator_ema.eval()
        row = {"preset": name, "device": device.type, "batch": batch, "plain_step_s": round(plain_s, 3),
               "regularised_step_s": round(full_s, 3), "train_s_per_it": round(train_s, 3),
               "train_it_per_s": round(1 / train_s, 3), "train_img_per_s": round(batch / train_s, 1)}
        rows.append(_bench_inference(row, enc, gen, res, device, infer_iters))
    return rows


def _bench_inference(row: dict, enc, gen, res: int, device, infer_iters: int) -> dict:
    """Milliseconds per region transfer (one image) at the training size, 128 and 256 px."""
    for size in sorted({res, 128, 256}):
        a = torch.rand(1, 3, size, size, device=device) * 2 - 1
        b = torch.rand(1, 3, size, size, device=device) * 2 - 1
        m = random_masks(1, size, size, torch.Generator().manual_seed(0)).to(device)
        inf.region_transfer(enc, gen, a, b, m)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(infer_iters):
            inf.region_transfer(enc, gen, a, b, m)
        _sync(device)
        ms = (time.perf_counter() - t0) / infer_iters * 1000
        row[f"region_ms_{size}px"] = round(ms, 1)
        row[f"region_img_per_s_{size}px"] = round(1000 / ms, 2)
    print(json.dumps(row), flush=True)
    return row


# --------------------------------------------------------------------------------------------- synthetic


def random_layout(size: int, gen: torch.Generator) -> torch.Tensor:
    """Label map (size, size) in {0,1,2,3}: sky, ground below a tilted horizon, an ellipse and a rectangle."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    r = torch.rand(10, generator=gen)
    labels = torch.zeros(size, size, dtype=torch.long)
    labels[y > 0.35 + 0.3 * r[0] + (r[1] - 0.5) * 0.4 * (x - 0.5)] = 1
    ellipse = ((x - r[2]) / (0.1 + 0.2 * r[3])) ** 2 + ((y - r[4]) / (0.1 + 0.2 * r[5])) ** 2 < 1
    labels[ellipse] = 2
    rect = ((x - r[6]).abs() < 0.05 + 0.15 * r[7]) & ((y - r[8]).abs() < 0.05 + 0.15 * r[9])
    labels[rect] = 3
    return labels


def random_palette(gen: torch.Generator) -> dict:
    """Style: 4 colours, a linear illumination gradient and its direction."""
    return {"colors": torch.rand(4, 3, generator=gen) * 1.6 - 0.8, "light": (torch.rand(2, generator=gen) - 0.5) * 0.6}


def render(labels: torch.Tensor, style: dict) -> torch.Tensor:
    size = labels.shape[-1]
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    light = style["light"][0] * x + style["light"][1] * y
    img = style["colors"][labels].permute(2, 0, 1) + light[None]
    return img.clamp(-1, 1)


def synthetic_scenes(n: int, size: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scenes = []
    for _ in range(n):
        img = render(random_layout(size, gen), random_palette(gen))
        scenes.append(((img + 1) * 127.5).round().to(torch.uint8))
    return scenes


def train_synthetic(iterations: int, device, overrides: dict, n_scenes: int = 256, save_model: str | None = None):
    from styleforge.region.train import RegionTrainer, TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        settings = dict(preset="cpu64", iterations=iterations, crop_scale=(1.0, 1.0), reg_interval=4,
                        reg_start=iterations // 10, sample_every=0, checkpoint_every=0, progress=True)
        settings.update(overrides)
        cfg = TrainConfig(data=tmp, output=tmp, device=device.type, **settings)
        trainer = RegionTrainer(cfg, images=synthetic_scenes(n_scenes, 64, seed=0))
        t0 = time.perf_counter()
        trainer.run()
        train_seconds = time.perf_counter() - t0
    enc, gen_net = trainer.encoder_ema.eval(), trainer.generator_ema.eval()
    if save_model:
        inf.save_model(save_model, enc, gen_net, {"synthetic_benchmark": {"iterations": iterations, **overrides}})
    return enc, gen_net, train_seconds


def mask_band(mask: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(interior, band) of a binary (N,1,H,W) mask: the pixels more than ``radius`` px inside it, and the pixels
    within ``radius`` px of its border on either side."""
    eroded = 1 - dilate_mask(1 - mask, radius)
    return eroded, dilate_mask(mask, radius) - eroded


def evaluate_synthetic(enc, gen_net, device, n_eval: int = 64, fades=(2, 4), band_radius: int = 4) -> dict:
    """Region swaps on held-out scenes whose exact answer is M·render(layout_A, style_B) + (1-M)·A.

    Also scored: the interior of the mask and a band around its border (``band_radius`` px each side) against
    that hard answer, and the whole image against answers whose style fades in over a Gaussian of σ px across
    the border (w = feather(M, σ); truth = w·render(layout_A, style_B) + (1-w)·A), the seamless edit the paper
    argues for (Eq. 4's "boundary discordance"). σ = 0 is the hard answer.
    """
    eval_gen = torch.Generator().manual_seed(123)
    layouts_a = [random_layout(64, eval_gen) for _ in range(n_eval)]
    styles_a = [random_palette(eval_gen) for _ in range(n_eval)]
    styles_b = [random_palette(eval_gen) for _ in range(n_eval)]
    a = torch.stack([render(la, sa) for la, sa in zip(layouts_a, styles_a)]).to(device)
    b = torch.stack([render(random_layout(64, eval_gen), sb) for sb in styles_b]).to(device)
    swap_truth = torch.stack([render(la, sb) for la, sb in zip(layouts_a, styles_b)]).to(device)
    masks = random_masks(n_eval, 64, 64, torch.Generator().manual_seed(7)).to(device)
    region_truth = masks * swap_truth + (1 - masks) * a
    interior, band = mask_band(masks, band_radius)
    soft_truths = {}
    for sigma in fades:
        w = feather_mask(masks, sigma)
        soft_truths[sigma] = w * swap_truth + (1 - w) * a
    rec = inf.reconstruct(enc, gen_net, a)
    result = {"reconstruction_psnr": round(psnr(rec, a), 2),
              "global_swap_psnr": round(psnr(inf.transfer(enc, gen_net, a, b), swap_truth), 2),
              "band_radius_px": band_radius,
              # the floor: returning A unchanged
              "identity_region_swap_psnr": round(psnr(a, region_truth), 2),
              "identity_inside_mask_psnr": round(psnr(a, region_truth, masks), 2)}

    def figures(out):
        row = {"region_swap_psnr": round(psnr(out, region_truth), 2),
               "inside_mask_psnr": round(psnr(out, region_truth, masks), 2),
               "mask_interior_psnr": round(psnr(out, region_truth, interior), 2),
               "mask_border_band_psnr": round(psnr(out, region_truth, band), 2),
               "background_psnr_vs_reconstruction": round(psnr(out, rec, 1 - masks), 2),
               "background_psnr_vs_content": round(psnr(out, a, 1 - masks), 2)}
        for sigma, truth in soft_truths.items():
            row[f"region_swap_psnr_fade_{sigma:g}px"] = round(psnr(out, truth), 2)
            row[f"mask_border_band_psnr_fade_{sigma:g}px"] = round(psnr(out, truth, band), 2)
        return row

    for composition in inf.COMPOSITION_SPACES:
        out = inf.region_transfer(enc, gen_net, a, b, masks, composition=composition)
        result[composition] = figures(out)
        if composition != "pixel":  # --paste-back: the same background as the pixel composite (exactly A)
            pasted = inf.apply_edits(enc, gen_net, a, [(b, masks)], paste_back=True, composition=composition)
            result[composition + "+paste_back"] = figures(pasted)
            # margin 0 pastes the transfer above as it is (what apply_edits returns with paste_margin=0)
            result[composition + "+paste_back_margin0"] = figures(masks * out + (1 - masks) * a)
    return result


def bench_synthetic(iterations: int, device, overrides: dict, model: str | None = None, save_model: str | None = None,
                    fades=(2, 4), band_radius: int = 4) -> dict:
    if model:
        enc, gen_net, _ = inf.load_model(model, device=device)
        result = {"model": model}
    else:
        enc, gen_net, seconds = train_synthetic(iterations, device, overrides, save_model=save_model)
        result = {"iterations": iterations, "overrides": overrides, "train_seconds": round(seconds, 1)}
    result.update(evaluate_synthetic(enc, gen_net, device, fades=fades, band_radius=band_radius))
    print(json.dumps(result, indent=2), flush=True)
    return result


# --------------------------------------------------------------------------------------------- bundled model


def bench_bundled(heldout: Path, model: str | None, device) -> dict:
    from styleforge.io import center_crop_resize, load_image, pil_to_tensor

    stylizer = inf.RegionStylizer.from_pretrained(model).to(device)
    size = stylizer.image_size
    paths = sorted(p for p in heldout.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(paths) < 2:
        sys.exit(f"need at least 2 held-out images in {heldout}")
    photos = torch.cat([pil_to_tensor(center_crop_resize(load_image(p), size)) for p in paths]).to(device)
    # every ordered (content, style) pair of different photos
    pairs = [(i, j) for i in range(len(paths)) for j in range(len(paths)) if i != j]
    imgs = photos[[i for i, _ in pairs]]
    styles = photos[[j for _, j in pairs]]
    masks = random_masks(len(pairs), size, size, torch.Generator().manual_seed(11)).to(device)
    enc, gen = stylizer.encoder, stylizer.generator
    rec = inf.reconstruct(enc, gen, imgs)
    out = inf.region_transfer(enc, gen, imgs, styles, masks)
    pixel = inf.region_transfer(enc, gen, imgs, styles, masks, composition="pixel")

    def masked_stats(x, m):
        m = m.expand_as(x)
        n = m.sum(dim=(2, 3)).clamp_min(1)
        mean = (x * m).sum(dim=(2, 3)) / n
        std = (((x - mean[..., None, None]) ** 2 * m).sum(dim=(2, 3)) / n).sqrt()
        return mean, std

    full = torch.ones_like(masks)
    style_mean, style_std = masked_stats(styles, full)

    def distance_to_style(x, m):
        """Mean over pairs of |mean - style mean| + |std - style std| of x's colours where m == 1."""
        mean, std = masked_stats(x, m)
        return ((mean - style_mean).norm(dim=1) + (std - style_std).norm(dim=1)).mean().item()

    dist_before = distance_to_style(imgs, masks)
    dist_after = distance_to_style(out, masks)
    # the same against the reconstruction: separates the edit's effect from the reconstruction error
    dist_rec = distance_to_style(rec, masks)
    # global transfer: whole-image colour statistics of G(C_A, S_B) against those of A's reconstruction
    dist_swap = distance_to_style(inf.transfer(enc, gen, imgs, styles), full)
    dist_rec_full = distance_to_style(rec, full)
    # inside the mask with --paste-back (default margin of one feature cell) and the pixel composite; with margin 0
    # the pixels inside the mask are those of ``out``, so its figure is dist_after's
    pasted = inf.apply_edits(enc, gen, imgs, [(styles, masks)], paste_back=True)
    closed_inside = {name: round(1 - dist / dist_before, 3) for name, dist in (
        ("paste_back", distance_to_style(pasted, masks)), ("paste_back_margin0", dist_after),
        ("pixel", distance_to_style(pixel, masks)))}
    result = {
        "images": [p.name for p in paths], "pairs": len(pairs), "size": size,
        "reconstruction_psnr": round(psnr(rec, imgs), 2),
        "background_psnr_vs_reconstruction": round(psnr(out, rec, 1 - masks), 2),
        "background_psnr_vs_content": round(psnr(out, imgs, 1 - masks), 2),
        "pixel_composite_background_psnr_vs_content": round(psnr(pixel, imgs, 1 - masks), 2),
        "masked_colour_stats_distance_to_style_before": round(dist_before, 4),
        "masked_colour_stats_distance_to_style_after": round(dist_after, 4),
        "fraction_of_distance_closed": round(1 - dist_after / dist_before, 3),
        "masked_colour_stats_distance_to_style_reconstruction": round(dist_rec, 4),
        "fraction_of_distance_closed_vs_reconstruction": round(1 - dist_after / dist_rec, 3),
        "global_swap_fraction_of_distance_closed_vs_reconstruction": round(1 - dist_swap / dist_rec_full, 3),
        "fraction_of_distance_closed_inside_mask": closed_inside,
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


# --------------------------------------------------------------------------------------------- full resolution


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB (..., 3) -> CIE Lab (D65), float64."""
    c = rgb.astype(np.float64) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    f = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(f > 0.008856, np.cbrt(f), 7.787 * f + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_gaussian(rgb: np.ndarray, where: np.ndarray | None = None):
    """Mean and covariance of the Lab colours of ``rgb`` (uint8 H×W×3) where ``where`` is true."""
    lab = srgb_to_lab(rgb)
    values = lab.reshape(-1, 3) if where is None else lab[where]
    return values.mean(0), np.cov(values.T)


def lab_distance(a, b) -> float:
    """Wasserstein-2 distance between two Gaussians (Lab units): sqrt of the Fréchet distance."""
    from styleforge.metrics.fid import frechet_distance

    return math.sqrt(frechet_distance(*a, *b))


def detail(rgb: np.ndarray, where: np.ndarray) -> float:
    """Mean gradient magnitude of Lab lightness (forward differences) over ``where``."""
    lightness = srgb_to_lab(rgb)[..., 0]
    gx = np.zeros_like(lightness)
    gy = np.zeros_like(lightness)
    gx[:, :-1] = np.diff(lightness, axis=1)
    gy[:-1] = np.diff(lightness, axis=0)
    return float(np.hypot(gx, gy)[where].mean())


def synthesise_large(photo: Path, size=(2048, 1536), grain: float = 3.0, seed: int = 0):
    """A large test photo from a small one: centre crop to the aspect, Lanczos upscale, plus seeded Gaussian grain
    (``grain`` levels) so that it has detail at full resolution, as a real photo of that size would."""
    from PIL import Image

    from styleforge.io import center_crop_resize, load_image

    img = center_crop_resize(load_image(photo), size)  # bicubic; then a Lanczos pass would add nothing
    arr = np.asarray(img, dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0, grain, arr.shape[:2] + (1,))  # luminance grain
    return Image.fromarray(np.clip(arr + noise, 0, 255).round().astype(np.uint8))


def fullres_cases(examples: Path, size=(2048, 1536)) -> list[dict]:
    """Every ordered pair of the example photos at their native size (the landscape with its meadow mask, the others
    with a seeded random mask of their size), and the synthesised large landscape with the meadow mask."""
    from PIL import Image

    photos = {p.stem: p for p in sorted(examples.glob("*.png")) if not p.stem.startswith("mask")}
    cases = []
    for i, (name, path) in enumerate(photos.items()):
        with Image.open(path) as im:
            w, h = im.size
        if name == "content_landscape":
            mask = examples / "mask_meadow.png"
        else:
            mask = random_masks(1, h, w, torch.Generator().manual_seed(100 + i))[0, 0].numpy()
        for style_name, style in photos.items():
            if style_name != name:
                cases.append({"name": f"{name}<-{style_name}", "content": path, "style": style, "mask": mask})
    large = synthesise_large(photos["content_landscape"], size)
    cases.append({"name": f"landscape_{size[0]}x{size[1]}<-style_coffee", "content": large,
                  "style": photos["style_coffee"], "mask": examples / "mask_meadow.png"})
    return cases


def evaluate_fullres(stylizer, case: dict, lift_kwargs: dict | None = None, with_baselines: bool = True) -> dict:
    """Outside-mask max abs difference, detail ratio inside the mask and style move for one case (see bench_fullres)."""
    from styleforge.io import load_image
    from styleforge.region.masks import dilate_mask

    content = np.asarray(load_image(case["content"]))
    style = np.asarray(load_image(case["style"]))
    height, width = content.shape[:2]
    weight = stylizer.paste_weight(case["mask"], width, height)
    inside = weight.numpy() > 0
    core = (1 - dilate_mask(1 - weight[None, None], 2))[0, 0].numpy() > 0  # 2 px away from the paste edge
    style_stats = lab_gaussian(style)
    before = lab_distance(lab_gaussian(content, inside), style_stats)
    base_detail = detail(content, core)
    call = dict(style=case["style"], mask=case["mask"], **(lift_kwargs or {}))

    def scores(out: np.ndarray) -> dict:
        return {"outside_max_abs_diff": int(np.abs(out.astype(int) - content)[~inside].max(initial=0)),
                "detail_ratio": round(detail(out, core) / base_detail, 3),
                "style_move": round(before - lab_distance(lab_gaussian(out, inside), style_stats), 3)}

    row = {"case": case["name"], "size": [width, height], "style_distance_before": round(before, 3),
           "lift": scores(np.asarray(stylizer(case["content"], **call).images[0]))}
    if with_baselines:
        row["upsample"] = scores(np.asarray(stylizer(case["content"], **{**call, "detail": "none"}).images[0]))
        work = np.asarray(stylizer(case["content"], **{**call, "output_size": "working"}).images[0])
        w, h = stylizer.working_size(width, height)
        work_inside = stylizer.prepare_mask(case["mask"], w, h)[0, 0].cpu().numpy() > 0
        work_content = np.asarray(stylizer.prepare_content(case["content"]))
        work_before = lab_distance(lab_gaussian(work_content, work_inside), style_stats)
        # how much the edit itself changes the region's lightness contrast (std of L*): a colour model that keeps
        # the photo's detail scales it by about this much, so the detail ratio is also given relative to it
        contrast = srgb_to_lab(work)[..., 0][work_inside].std() / srgb_to_lab(work_content)[..., 0][work_inside].std()
        row["working"] = {"style_move": round(work_before - lab_distance(lab_gaussian(work, work_inside), style_stats), 3),
                          "lightness_contrast_ratio": round(float(contrast), 3)}
    return row


def summarise(rows: list[dict], variant: str) -> dict:
    """Means over cases, and the style move kept: sum of the variant's moves / sum of the working-size moves."""
    work = sum(r["working"]["style_move"] for r in rows)
    return {"outside_max_abs_diff": max(r[variant]["outside_max_abs_diff"] for r in rows),
            "detail_ratio_mean": round(float(np.mean([r[variant]["detail_ratio"] for r in rows])), 3),
            "detail_ratio_min": round(min(r[variant]["detail_ratio"] for r in rows), 3),
            "detail_ratio_over_edit_contrast_mean": round(float(np.mean(
                [r[variant]["detail_ratio"] / r["working"]["lightness_contrast_ratio"] for r in rows])), 3),
            "style_move_kept": round(sum(r[variant]["style_move"] for r in rows) / work, 3) if work else None}


def timed_edit(content, style, mask, model, save_to: str | None = None) -> dict:
    """Seconds (wall and CPU) and peak resident memory of one whole edit in this process: load, edit, lift, paste;
    the PNG write is timed apart. Run it in a fresh process for a clean peak."""
    import resource

    import threading

    import psutil  # benchmark only

    stylizer = inf.RegionStylizer.from_pretrained(model).to("cpu")
    stylizer(content, style=style, mask=mask, output_size="working")  # warm-up: first-call costs of torch
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample():  # the edit's own peak: resident memory sampled every 5 ms above what the process held before
        while not done.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    out = stylizer(content, style=style, mask=mask).images[0]
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    done.set()
    sampler.join()
    result = {"size": list(out.size), "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
              "edit_peak_memory_mb": round((max(peak[0], process.memory_info().rss) - baseline) / 2**20, 1),
              "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if save_to:
        from styleforge.io import save_image

        t0 = time.perf_counter()
        save_image(out, save_to, overwrite=True)
        result["png_write_seconds"] = round(time.perf_counter() - t0, 3)
    return result


def bench_fullres(examples: Path, model: str | None, grid: dict | None, big: tuple[int, int] | None) -> dict:
    """The full-resolution lift (issue 14): see the module docstring."""
    import os
    import subprocess

    stylizer = inf.RegionStylizer.from_pretrained(model).to("cpu")
    cases = fullres_cases(examples)
    rows = [evaluate_fullres(stylizer, case) for case in cases]
    for r in rows:
        print(json.dumps(r), flush=True)
    result = {"cases": rows, "lift": summarise(rows, "lift"), "upsample": summarise(rows, "upsample")}
    if grid:
        # the lift's settings on the native-size pairs (the model's output is computed again for each; it is cheap)
        native = [(r, c) for r, c in zip(rows, cases) if isinstance(c["content"], Path)]
        table = []
        for radius in grid["radius"]:
            for eps in grid["eps"]:
                for sigma in grid["sigma"]:
                    kw = dict(lift_radius=radius, lift_eps=eps, lift_sigma=sigma)
                    lifted = [{**r, "lift": evaluate_fullres(stylizer, c, kw, with_baselines=False)["lift"]}
                              for r, c in native]
                    table.append({"radius": radius, "eps": eps, "sigma": sigma, **summarise(lifted, "lift")})
                    print(json.dumps(table[-1]), flush=True)
        result["grid"] = table
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in (("2048x1536", (2048, 1536)), *((("x".join(map(str, big)), big),) if big else ())):
            path = Path(tmp) / f"large_{label}.png"
            synthesise_large(examples / "content_landscape.png", size).save(path)
            code = ("import json, sys; sys.path.insert(0, {bench!r}); import bench_region as b; "
                    "print(json.dumps(b.timed_edit({c!r}, {s!r}, {m!r}, {model!r}, {o!r})))").format(
                bench=str(Path(__file__).resolve().parent), c=str(path), s=str(examples / "style_coffee.png"),
                m=str(examples / "mask_meadow.png"), model=model, o=str(Path(tmp) / "out.png"))
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
            if proc.returncode:
                raise SystemExit(proc.stderr)
            result[f"speed_{label}"] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps({label: result[f"speed_{label}"]}), flush=True)
    result["load_average"] = os.getloadavg()
    print(json.dumps({k: v for k, v in result.items() if k not in ("cases", "grid")}, indent=2), flush=True)
    return result


def parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"--set takes KEY=VALUE, got {pair!r}")
        overrides[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return overrides


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--presets", nargs="+", default=["test", "cpu64", "gpu128", "ref256"])
    s.add_argument("--train-iters", type=int, default=3)
    s.add_argument("--infer-iters", type=int, default=5)
    s.add_argument("--batch-size", type=int, default=None, help="override the presets' batch sizes")
    s.add_argument("--inference-only", action="store_true", help="skip the training measurement (large presets on small machines)")
    q = sub.add_parser("synthetic")
    q.add_argument("--iterations", type=int, default=300)
    q.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training overrides, e.g. w_cc=0 w_ca=0 (the SwapAE ablation) or reg_interval=16")
    q.add_argument("--save-model", default=None, help="also save the trained model to this folder")
    q.add_argument("--model", default=None, help="evaluate this trained model instead of training one")
    q.add_argument("--fades", type=float, nargs="*", default=[2, 4], metavar="SIGMA",
                   help="also score against answers whose style fades in over a Gaussian of SIGMA px across the mask border")
    q.add_argument("--band-radius", type=int, default=4, help="half-width in px of the border band that is scored apart")
    b = sub.add_parser("bundled")
    b.add_argument("--heldout", default="data/region/heldout")
    b.add_argument("--model", default=None)
    f = sub.add_parser("fullres")
    f.add_argument("--examples", default=str(Path(__file__).resolve().parent.parent / "examples"))
    f.add_argument("--model", default=None)
    f.add_argument("--grid", action="store_true", help="also score a grid of lift settings on the native-size pairs")
    f.add_argument("--grid-radius", type=int, nargs="+", default=[1, 2, 4])
    f.add_argument("--grid-eps", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    f.add_argument("--grid-sigma", type=float, nargs="+", default=[0, 1, 2, 3])
    f.add_argument("--big", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="also time one edit of a W x H photo (e.g. 6000 4000, 24 megapixels)")
    for p in (s, q, b, f):
        p.add_argument("--device", default="auto")
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    from styleforge.runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    if args.what == "speed":
        result = bench_speed(args.presets, device, args.train_iters, args.infer_iters, args.batch_size, args.inference_only)
    elif args.what == "synthetic":
        result = bench_synthetic(args.iterations, device, parse_overrides(args.set), args.model, args.save_model,
                                 args.fades, args.band_radius)
    elif args.what == "fullres":
        grid = {"radius": args.grid_radius, "eps": args.grid_eps, "sigma": args.grid_sigma} if args.grid else None
        result = bench_fullres(Path(args.examples), args.model, grid, tuple(args.big) if args.big else None)
    else:
        result = bench_bundled(Path(args.heldout), args.model, device)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
