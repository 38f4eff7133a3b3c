"""Inference with a trained region-wise stylizer (spec §4).

The tensor-level functions take an encoder, a generator and image tensors in [-1, 1]; :class:`RegionStylizer`
wraps them for images on disk or in memory (loading, resizing, masks, saving) and is what the CLI uses.
All inference runs in eval mode, where the generator's noise is a fixed per-layer map, so results are
deterministic.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import DiffusionPipeline

from ..diffusion.convention import (call_per_item, check_output_type, deprecated, is_batch, loading_keywords, move_to,
                                    per_image, postprocess)
from ..errors import InputError, ModelNotFoundError
from .lift_settings import DEFAULT_EPS, DEFAULT_RADIUS, DEFAULT_SIGMA, FEATHER_RANGE, check_lift_settings
from .masks import broadcast_mask, dilate_mask, feather_inside, feather_mask, resample_mask
from .model import RegionEncoder, RegionGenerator

COMPOSITION_SPACES = ("feature", "pixel", "content_code")
OUTPUT_SIZES = ("native", "working")
DETAIL_MODES = ("guided", "none")
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "region"
MODEL_CONFIG = "config.json"

# --------------------------------------------------------------------------------------------- tensor level


def mix_styles(style_content: torch.Tensor, style_reference: torch.Tensor, strength: float) -> torch.Tensor:
    """(1-t)·S_A + t·S_B: exact endpoints at t = 0 and t = 1 (spec §1, style strength)."""
    if not 0.0 <= float(strength) <= 1.0:
        raise InputError(f"strength must lie in [0, 1], got {strength}")
    return (1.0 - strength) * style_content + strength * style_reference


def compose_features(features_content: torch.Tensor, features_styled: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
    """ê = M_e ⊙ e_g + (1 - M_e) ⊙ e_A (paper Eq. 5, with soft M_e allowed)."""
    return mask_features * features_styled + (1 - mask_features) * features_content


@torch.no_grad()
def reconstruct(encoder: RegionEncoder, generator: RegionGenerator, image: torch.Tensor) -> torch.Tensor:
    """G(C_A, S_A)."""
    content, style = encoder(image)
    return generator(content, style)


@torch.no_grad()
def transfer(encoder, generator, content_image, style_image, strength: float = 1.0) -> torch.Tensor:
    """Global transfer G(C_A, (1-t)·S_A + t·S_B)."""
    content, style_a = encoder(content_image)
    style_b = encoder.style(encoder.features(style_image)).expand_as(style_a)
    return generator(content, mix_styles(style_a, style_b, strength))


@torch.no_grad()
def region_transfer(
    encoder,
    generator,
    content_image: torch.Tensor,
    style_image: torch.Tensor,
    mask: torch.Tensor,
    strength: float = 1.0,
    composition: str = "feature",
    mask_resample: str = "area",
    feather: float = 0.0,
    return_parts: bool = False,
):
    """Restyle the masked region of ``content_image`` with the global style of ``style_image``.

    ``composition``: ``feature`` (the method, Eqs. 5-6), ``pixel`` (the naive composite of Eq. 4),
    ``content_code`` (SwapAE-style structure-code composite). ``mask`` is (H,W), (1,1,H,W) or (N,1,H,W),
    1 = restyle. With ``return_parts`` also returns a dict of the intermediate tensors.
    """
    if composition not in COMPOSITION_SPACES:
        raise InputError(f"composition must be one of {', '.join(COMPOSITION_SPACES)}, got {composition!r}")
    n, _, h, w = content_image.shape
    mask = feather_mask(broadcast_mask(mask, n, (h, w)).to(content_image), feather)
    features_a = encoder.features(content_image)
    content_a, style_a = encoder.content(features_a), encoder.style(features_a)
    style_b = encoder.style(encoder.features(style_image)).expand_as(style_a)
    global_out = generator(content_a, mix_styles(style_a, style_b, strength))
    parts = {"mask": mask, "global": global_out, "features_content": features_a}
    if composition == "pixel":
        out = mask * global_out + (1 - mask) * content_image
    else:
        features_g = encoder.features(global_out)
        mask_e = resample_mask(mask, tuple(features_a.shape[-2:]), mask_resample)
        parts.update(features_global=features_g, mask_features=mask_e)
        if composition == "feature":
            composed = compose_features(features_a, features_g, mask_e)
            parts["features_composed"] = composed
            out = generator(encoder.content(composed), encoder.style(composed))
        else:
            content_mix = compose_features(content_a, encoder.content(features_g), mask_e)
            out = generator(content_mix, style_a)
    return (out, parts) if return_parts else out


@torch.no_grad()
def edit(encoder, generator, image: torch.Tensor, style_image: torch.Tensor, mask: torch.Tensor | None,
         strength: float = 1.0, grow: int = 0, **region_kwargs) -> torch.Tensor:
    """One edit at working size: the global transfer without a mask, else the region transfer on M grown by
    ``grow`` pixels (the margin a later paste-back restyles beyond the mask)."""
    if mask is None:
        return transfer(encoder, generator, image, style_image, strength)
    if grow > 0:
        n, _, h, w = image.shape
        mask = dilate_mask(broadcast_mask(mask, n, (h, w)).to(image), grow)
    return region_transfer(encoder, generator, image, style_image, mask, strength, **region_kwargs)


def check_paste_margin(encoder, paste_margin: int | None) -> int:
    """The paste margin in pixels; ``None`` means one feature cell (2^d px)."""
    if paste_margin is None:
        return encoder.downsample_factor
    if paste_margin < 0:
        raise InputError(f"paste margin must be >= 0 pixels, got {paste_margin}")
    return int(paste_margin)


@torch.no_grad()
def apply_edits(
    encoder,
    generator,
    content_image: torch.Tensor,
    edits: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    strength: float = 1.0,
    paste_back: bool = False,
    paste_margin: int | None = None,
    **region_kwargs,
) -> torch.Tensor:
    """Successive edits (spec §4, several regions): I⁰ = A, Iᵏ = region_transfer(Iᵏ⁻¹, B_k, M_k).

    A ``None`` mask means global transfer. ``paste_back`` returns M·Iᵏ + (1-M)·Iᵏ⁻¹ after each edit, so pixels
    outside every mask are exactly the content image's. Since those pixels are replaced anyway, the feature edit
    then runs on M grown by ``paste_margin`` pixels (default: one feature cell, 2^d px), so every feature cell
    the mask touches is fully restyled and the region keeps B's style up to its edge; 0 edits with M itself.
    """
    current = content_image
    n, _, h, w = content_image.shape
    paste_margin = check_paste_margin(encoder, paste_margin)
    for style_image, mask in edits:
        pasting = paste_back and mask is not None
        out = edit(encoder, generator, current, style_image, mask, strength, paste_margin if pasting else 0, **region_kwargs)
        if pasting:
            m = broadcast_mask(mask, n, (h, w)).to(current)
            out = m * out + (1 - m) * current
        current = out
    return current


@torch.no_grad()
def interpolate(encoder, generator, source: torch.Tensor, target: torch.Tensor, alphas: Sequence[float], what: str = "style") -> torch.Tensor:
    """Codes interpolated linearly between source and target (paper §4.4); (len(alphas)·N, 3, H, W).

    ``content``: G(lerp(C_src, C_tgt, α), S_src); ``style``: G(C_src, lerp(S_src, S_tgt, α)); ``both``.
    Content interpolation needs source and target of the same size.
    """
    if what not in ("content", "style", "both"):
        raise InputError(f"interpolation must be content, style or both, got {what!r}")
    content_s, style_s = encoder(source)
    content_t, style_t = encoder(target)
    if what != "style" and content_s.shape != content_t.shape:
        raise InputError("content interpolation needs source and target images of the same size")
    outputs = []
    for alpha in alphas:
        content = (1 - alpha) * content_s + alpha * content_t if what != "style" else content_s
        style = (1 - alpha) * style_s + alpha * style_t.expand_as(style_s) if what != "content" else style_s
        outputs.append(generator(content, style))
    return torch.cat(outputs)


# --------------------------------------------------------------------------------------------- model folders


def save_model(folder: str | os.PathLike, encoder: RegionEncoder, generator: RegionGenerator, info: dict | None = None) -> Path:
    """An inference model folder: ``encoder/``, ``generator/`` (safetensors + config.json) and ``config.json``."""
    from ..io import atomic_folder

    folder = Path(folder)
    meta = {"_class_name": "RegionStylizer", "image_size": encoder.config.image_size, **(info or {})}
    with atomic_folder(folder) as tmp:  # complete or absent, never half-written
        encoder.save_pretrained(tmp / "encoder", safe_serialization=True)
        generator.save_pretrained(tmp / "generator", safe_serialization=True)
        (tmp / MODEL_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def find_model_folder(model: str | os.PathLike | None) -> Path:
    """The bundled model, an inference folder, a training run (its ``model/``) or a checkpoint (its EMA nets)."""
    if model is None:
        folder = BUNDLED_MODEL
        if not (folder / "encoder").is_dir():
            raise ModelNotFoundError(f"the bundled region model is missing from {folder}; reinstall styleforge or pass --model")
        return folder
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"region model not found: {model} (a folder written by `styleforge region train`)")
    for candidate in (path, path / "model"):
        if (candidate / "encoder" / "config.json").exists() and (candidate / "generator" / "config.json").exists():
            return candidate
        if (candidate / "encoder_ema" / "config.json").exists():
            return candidate
    raise ModelNotFoundError(f"{model} is not a region model folder (expected encoder/ and generator/ in it)")


def load_model(model: str | os.PathLike | None = None, device="cpu", dtype=torch.float32, variant: str | None = None):
    """(encoder, generator, info) in eval mode from :func:`find_model_folder`'s answer."""
    folder = find_model_folder(model)
    prefix = "_ema" if (folder / "encoder_ema").is_dir() else ""
    try:
        encoder = RegionEncoder.from_pretrained(folder / f"encoder{prefix}", torch_dtype=dtype, variant=variant)
        generator = RegionGenerator.from_pretrained(folder / f"generator{prefix}", torch_dtype=dtype, variant=variant)
        if any(t.is_meta for net in (encoder, generator) for t in net.state_dict().values()):
            raise ValueError("weights missing from the files")  # diffusers leaves absent tensors unloaded (meta)
    except Exception:  # garbage config.json, swapped or truncated weights, a missing variant: a damaged folder
        raise ModelNotFoundError(f"the region model in {folder} is damaged (its encoder/generator configs or weights "
                                 "cannot be loaded)" + (f" or has no {variant!r} variant" if variant else "")) from None
    info = {}
    if (folder / MODEL_CONFIG).exists():
        try:
            info = json.loads((folder / MODEL_CONFIG).read_text())
            if not isinstance(info, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            raise ModelNotFoundError(f"{folder / MODEL_CONFIG} is damaged (not a region model config)") from None
    encoder.to(device).eval().requires_grad_(False)
    generator.to(device).eval().requires_grad_(False)
    return encoder, generator, info


# --------------------------------------------------------------------------------------------- image level


def _resized(img, size: tuple[int, int]):
    """``img`` at ``size`` (bicubic), or ``img`` itself when it already has that size."""
    return img.resize(size, resample=3) if img.size != size else img


def _lift_kwargs(settings: dict) -> dict:
    """The lift's keywords out of the settings recorded with a result."""
    return {k: settings[k] for k in ("radius", "eps", "prior", "sigma")}


@dataclass
class RegionStylizerOutput:
    images: Any  # the results as ``output_type`` asks (PIL list, (B, H, W, 3) array or (B, 3, H, W) tensor)
    working_sizes: list = per_image()  # the size (w, h) the model worked at, for each result


class RegionStylizer(DiffusionPipeline):
    """Region-wise photorealistic style transfer (TCP) on images.

    >>> stylizer = RegionStylizer.from_pretrained()          # the bundled model; .to("cuda") to move it
    >>> out = stylizer("content.png", style="style.png", mask="mask.png")
    >>> out.images[0].save("out.png")

    Images are worked on at the model's training resolution (the content's shorter side is resized to it, each
    side rounded to a multiple of the encoder's downsampling factor; the style image is centre-cropped and
    resized to a square of that size). ``size`` picks another working resolution.
    """

    model_cpu_offload_seq = "encoder->generator"
    _callback_tensor_inputs: list[str] = []  # one forward pass: no steps to report

    def __init__(self, encoder: RegionEncoder, generator: RegionGenerator, info: dict | None = None):
        super().__init__()
        self.register_modules(encoder=encoder.eval().requires_grad_(False), generator=generator.eval().requires_grad_(False))
        self.info = dict(info or {})
        self.image_size = int(self.info.get("image_size", encoder.config.image_size))

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, *, torch_dtype: torch.dtype | str | None = None,
                        variant: str | None = None, device=None, dtype=None) -> "RegionStylizer":
        """Load the bundled model (``model=None``), a folder written by ``styleforge region train``, or a checkpoint,
        on the CPU in float32 unless ``torch_dtype`` (or ``dtype``) says otherwise; then ``.to(device)``
        (``device=`` is deprecated)."""
        torch_dtype, device = loading_keywords(torch_dtype, device, dtype)
        encoder, generator, info = load_model(model, "cpu", torch_dtype or torch.float32, variant)
        return move_to(cls(encoder, generator, info), device)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        return save_model(folder, self.encoder, self.generator, self.info)

    # ---- image preparation
    def working_size(self, width: int, height: int, size: int | None = None) -> tuple[int, int]:
        """(w, h) with the shorter side ``size`` (default: training resolution), multiples of 2^d."""
        from ..validation import check_aspect, check_working_size, optional_side

        size = optional_side.check(size, "size") or self.image_size
        check_aspect(width, height, "the content image")  # before scaling the short side up makes the long one explode
        f = self.encoder.downsample_factor
        min_side = 8 * f  # the style head's two valid stride-2 convs need an e map of at least 7×7
        scale = size / min(width, height)
        w = max(min_side, round(width * scale / f) * f)
        h = max(min_side, round(height * scale / f) * f)
        check_working_size(w, h, "the content image's working size")
        return w, h

    def _to_tensor(self, image) -> torch.Tensor:
        from ..io import pil_to_tensor

        return pil_to_tensor(image).to(self.device, self.dtype)

    def prepare_content(self, image, size: int | None = None):
        from ..io import load_image

        img = load_image(image, name="content image")
        w, h = self.working_size(*img.size, size=size)
        return _resized(img, (w, h))

    def prepare_style(self, image, size: int | None = None):
        from ..io import center_crop_resize, load_image

        return center_crop_resize(load_image(image, name="style image"), size or self.image_size)

    def prepare_mask(self, mask, width: int, height: int, threshold: float = 0.5) -> torch.Tensor:
        from ..io import load_mask

        return load_mask(mask, size=(height, width), threshold=threshold, required=True).to(self.device, self.dtype)

    # ---- operations on images (PIL in, PIL out)
    def reconstruct(self, image, size: int | None = None):
        from ..io import tensor_to_pil

        x = self._to_tensor(self.prepare_content(image, size))
        return tensor_to_pil(reconstruct(self.encoder, self.generator, x))[0]

    def paste_weight(self, mask, width: int, height: int, sigma: float = 0.0) -> torch.Tensor:
        """(H, W) paste-back weight at full resolution: the mask (any size) resampled to (W, H) and binarised,
        its edge softened inward by a Gaussian of ``sigma`` px, so every pixel outside the mask has weight 0."""
        from ..io import load_mask

        m = broadcast_mask(load_mask(mask, threshold=0.5, required=True), 1, (height, width))
        return feather_inside((m >= 0.5).float(), sigma)[0, 0]

    def _styles_and_masks(self, style, mask) -> list[tuple]:
        styles = list(style) if isinstance(style, (list, tuple)) else ([style] if style is not None else [])
        if not styles:
            raise InputError("at least one style image is needed")
        if mask is None:
            masks = [None] * len(styles)
        else:
            masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
        if len(masks) != len(styles):
            raise InputError(f"got {len(styles)} style image(s) but {len(masks)} mask(s); give one mask per style or none")
        return list(zip(styles, masks))

    def _lift(self, guide: torch.Tensor, result: torch.Tensor, image, detail: str, lift_settings: dict,
              fit_weight: torch.Tensor | None = None, paste_weight: torch.Tensor | None = None):
        """A working-size result (1,3,h,w in [-1,1], edited from ``guide``) carried onto ``image`` (uint8 H×W×3)."""
        import numpy as np
        from PIL import Image

        from ..io import tensor_to_pil
        from .lift import lift, paste_image

        if detail == "guided":
            to_unit = lambda x: (x[0].detach().float().cpu().clamp(-1, 1) + 1) / 2  # noqa: E731
            return lift(to_unit(guide), to_unit(result), image, fit_weight=fit_weight, paste_weight=paste_weight,
                        **lift_settings)
        upsampled = tensor_to_pil(result)[0].resize((image.shape[1], image.shape[0]), resample=Image.BICUBIC)
        return paste_image(image, np.asarray(upsampled), paste_weight)

    def __call__(
        self,
        content,
        style=None,
        mask=None,
        strength: float = 1.0,
        paste_back: bool = True,
        paste_margin: int | None = None,
        composition: str = "feature",
        mask_resample: str = "area",
        feather: float = 0.0,
        size: int | None = None,
        output_size: str = "native",
        detail: str = "guided",
        lift_radius: int = DEFAULT_RADIUS,
        lift_eps: float = DEFAULT_EPS,
        lift_prior: str = "global",
        lift_sigma: float = DEFAULT_SIGMA,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        output_type: str = "pil",
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> RegionStylizerOutput:
        """Stylize ``content`` (an image, or a list/batch of images each stylized the same way). ``style``/``mask``
        may be single items or equal-length lists of (style, mask) pairs applied in order; no mask means global
        transfer.

        The model works at ``size`` (default: its training size). ``output_size="native"`` returns the content's
        own size: each edit is lifted onto the full-resolution photo (``detail="guided"``: a local affine colour
        model fitted at working size, see :mod:`styleforge.region.lift`; ``"none"``: the result upsampled) and,
        with ``paste_back``, composited inside the full-resolution mask (its edge softened inward by ``feather``
        working pixels), so every pixel outside the masks equals the input's. ``"working"`` returns the
        working-size result as the model gives it. Inference is deterministic (``generator``/``seed`` are accepted
        for the common convention and change nothing); it is one forward pass, so there are no steps: a
        ``callback_on_step_end`` and ``output_type="latent"`` are refused."""
        if is_batch(content):
            return call_per_item(self, locals(), ("content",))
        check_output_type(output_type, has_latents=False)
        if callback_on_step_end is not None:
            raise InputError("the region stylizer is one forward pass with no denoising steps: callback_on_step_end "
                             "does not apply")
        from ..io import load_image, pil_to_tensor
        from ..validation import Number, fraction

        fraction.check(strength, "strength")
        FEATHER_RANGE.check(feather, "feather")
        Number(int, 0, optional=True).check(paste_margin, "paste_margin")
        settings = lift_settings(output_size, detail, lift_radius, lift_eps, lift_prior, lift_sigma)
        pairs = self._styles_and_masks(style, mask)
        margin = check_paste_margin(self.encoder, paste_margin)
        region_kwargs = dict(composition=composition, mask_resample=mask_resample, feather=feather)
        full = load_image(content, name="content image")
        w, h = self.working_size(*full.size, size=size)
        edits = [(self._to_tensor(self.prepare_style(s, size)), m) for s, m in pairs]
        if output_size == "working":
            work = _resized(full, (w, h))
            masks = [(s, self.prepare_mask(m, w, h) if m is not None else None) for s, m in edits]
            out = apply_edits(self.encoder, self.generator, self._to_tensor(work), masks, strength=strength,
                              paste_back=paste_back, paste_margin=margin, **region_kwargs)
            return RegionStylizerOutput(postprocess(out, output_type), [(w, h)])
        image = self._native(full, edits, (w, h), strength, paste_back, margin, feather, region_kwargs, settings)
        images = [image] if output_type == "pil" else postprocess(pil_to_tensor(image), output_type)
        return RegionStylizerOutput(images, [(w, h)])

    def _native(self, full, edits, working, strength, paste_back, margin, feather, region_kwargs, settings):
        """Edits chained at full resolution: each one reads a working-size copy of the current photo."""
        import numpy as np
        from PIL import Image

        from ..io import check_finite

        current = np.array(full)
        width, height = full.size
        w, h = working
        detail = settings["detail"]
        lift_kwargs = _lift_kwargs(settings)
        for style_t, mask in edits:
            work = Image.fromarray(current)
            x = self._to_tensor(_resized(work, (w, h)))
            mask_w = self.prepare_mask(mask, w, h) if mask is not None else None
            pasting = paste_back and mask is not None
            # pasting back restyles the mask grown by the margin (see apply_edits), and the global colour prior is
            # fitted where the result will be used: that same grown region
            restyled = dilate_mask(mask_w, margin) if pasting else mask_w
            y = edit(self.encoder, self.generator, x, style_t, restyled, strength, **region_kwargs)
            check_finite(y)  # the lift would carry NaNs into the photo as black pixels
            fit_weight = restyled[0, 0].cpu() if pasting else None
            weight = self.paste_weight(mask, width, height, feather * height / h) if pasting else None
            current = self._lift(x, y, current, detail, lift_kwargs, fit_weight, weight)
        return Image.fromarray(current)

    def apply(self, *args, **kwargs):
        """The result of ``__call__`` as one PIL image (the older return value); deprecated."""
        deprecated("RegionStylizer.apply(...)", "RegionStylizer(...).images[0]")
        return self(*args, **kwargs).images[0]

    def interpolate(self, source, target, alphas: Sequence[float] = (0, 0.25, 0.5, 0.75, 1), what: str = "style",
                    size: int | None = None, output_size: str = "native", detail: str = "guided",
                    lift_radius: int = DEFAULT_RADIUS, lift_eps: float = DEFAULT_EPS, lift_prior: str = "global",
                    lift_sigma: float = DEFAULT_SIGMA):
        """Images along the content or style interpolation from ``source`` to ``target`` (list of PIL).

        With ``output_size="native"`` the frames have the source's size: style-interpolation frames are lifted
        onto the source photo like :meth:`__call__`'s edits; content and both-codes frames carry the target's
        layout, which the source photo does not have, so they are upsampled instead.
        """
        import numpy as np
        from PIL import Image

        from ..io import center_crop_resize, load_image, tensor_to_pil

        settings = lift_settings(output_size, detail, lift_radius, lift_eps, lift_prior, lift_sigma)
        full = load_image(source, name="source image")
        w, h = self.working_size(*full.size, size=size)
        src = _resized(full, (w, h))
        # the target is cropped to the source's working size so content codes line up cell by cell
        tgt = center_crop_resize(load_image(target, name="target image"), src.size)
        x = self._to_tensor(src)
        out = interpolate(self.encoder, self.generator, x, self._to_tensor(tgt), alphas, what)
        if output_size == "working":
            return tensor_to_pil(out)
        detail = settings["detail"] if what == "style" else "none"
        lift_kwargs = _lift_kwargs(settings)
        image = np.array(full)
        return [Image.fromarray(self._lift(x, frame[None], image, detail, lift_kwargs)) for frame in out]


def lift_settings(output_size: str = "native", detail: str = "guided", radius: int = DEFAULT_RADIUS,
                  eps: float = DEFAULT_EPS, prior: str = "global", sigma: float = DEFAULT_SIGMA) -> dict:
    """The checked output-size and lift settings, as recorded in an output's metadata."""
    if output_size not in OUTPUT_SIZES:
        raise InputError(f"output size must be one of {', '.join(OUTPUT_SIZES)}, got {output_size!r}")
    if detail not in DETAIL_MODES:
        raise InputError(f"detail must be one of {', '.join(DETAIL_MODES)}, got {detail!r}")
    radius, eps, sigma = check_lift_settings(radius, eps, prior, sigma)
    return {"output_size": output_size, "detail": detail, "radius": radius, "eps": eps, "prior": prior, "sigma": sigma}
