"""OSASIS stage 2 (stylization, paper §3.2 / B.1) and text-driven manipulation (§3.2, spec §10.11 a).

Stylization of a photo I_A^in with the fine-tuned eps_B:

1. z_in = Enc(I_A^in), z_style = Enc(I_B^style)  (the artwork itself, not its photo counterpart);
2. x_t0 = DDIM-encode(I_A^in) with the frozen eps_A conditioned on z_in (no SPN, no mixing);
3. for each decode step: x' = x + lambda SPN(I_A^in, tau); DDIM step of eps_B(x', t; z_in, z_style; S), where the
   res-blocks of the levels in S (resolution >= f_ch) take z_style and all others, the middle block included,
   take z_in (Eq. 27).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from ..diffusion.convention import StepEnd, as_items, check_output_type, deprecated, loading_keywords, move_to, postprocess
from ..diffusion.memory import MemorySavers, check_finite, execution_device, offload_modules
from ..errors import InputError, ModelNotFoundError
from ..io import ImageLike, load_image, pil_to_tensor
from .core import encode_to_t0, spn_decode_step
from .losses import CLIPEmbedder, clip_text_direction_loss
from .models import (DiffAEAutoencoder, LatentDDIMNet, PlainSPN, StructurePreservingNetwork, load_model,
                     read_torch_file, strict_load)
from .schedule import NoiseSchedule, TimestepPlan

RUN_FILE = "osasis.json"


@dataclass
class StylizeSettings:
    """Stage-2 knobs; defaults are the official inference settings (``utils/tester.py``)."""

    t0_ratio: float = 0.5
    encode_steps: int = 100
    decode_steps: int = 50
    plan: str = "official"
    spn_weight: float = 0.1
    split_resolution: int = 32
    swap_codes: bool = False
    style_middle: bool = False
    clamp: bool = True
    batch_size: int = 64

    def __post_init__(self):
        from .. import validation as V

        V.check_all(t0_ratio=(self.t0_ratio, V.open_fraction), encode_steps=(self.encode_steps, V.steps),
                    decode_steps=(self.decode_steps, V.steps), spn_weight=(self.spn_weight, V.non_negative),
                    split_resolution=(self.split_resolution, V.count), batch_size=(self.batch_size, V.count))

    def timestep_plan(self) -> TimestepPlan:
        return TimestepPlan(self.t0_ratio, self.encode_steps, self.decode_steps, self.plan)


@dataclass
class EditSettings:
    """Text-driven manipulation (variant a). The paper gives none of these; all are the toolkit's choices."""

    iterations: int = 50
    lr: float = 0.01
    l2_weight: float = 0.0
    code_space: str = "normalized"  # optimise DiffAE-normalised codes (needs the latent statistics) or "raw"


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """The official preprocessing: ``Resize((size, size))``, bilinear, no crop (inputs are aligned faces)."""
    return img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR)


def images_to_tensor(images, size: int, name: str = "image") -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images if images.ndim == 4 else images[None]
    items = images if isinstance(images, (list, tuple)) else [images]
    return pil_to_tensor([resize_square(load_image(i, name=name), size) for i in items])


@dataclass
class OSASISPipelineOutput:
    images: Any  # the stylized photos as ``output_type`` asks (PIL list, (B, H, W, 3) array or (B, 3, H, W) tensor)
    content_codes: torch.Tensor | None = None  # the optimised semantic codes z_in* of a text edit (else None)


class OSASISPipeline(DiffusionPipeline):
    """Stylize photos with a per-style fine-tuned DiffAE (``unet_b``) and SPN, frozen ``unet_a`` + encoder.

    >>> pipe = OSASISPipeline.from_pretrained("run/").to("cuda")        # a folder written by `oneshot train`
    >>> out = pipe(["face1.png", "face2.png"], output_type="np")         # the run's artwork as the style
    """

    model_cpu_offload_seq = "unet_a->unet_b"
    _optional_components = ["spn", "latent_net", "clip"]
    #: the pixel-space sample x_t of the decode loop, offered to ``callback_on_step_end``
    _callback_tensor_inputs = ["sample"]

    def __init__(self, unet_a: DiffAEAutoencoder, unet_b: DiffAEAutoencoder, spn: StructurePreservingNetwork | PlainSPN | None = None,
                 *, style_image: ImageLike | torch.Tensor | None = None, spn_time_input: str = "grid_index",
                 latent_net: LatentDDIMNet | None = None, clip: CLIPEmbedder | None = None,
                 schedule: NoiseSchedule | None = None):
        super().__init__()
        if unet_a.encoder is None:
            raise InputError("unet_a must carry the semantic encoder")
        self.register_modules(unet_a=unet_a.eval().requires_grad_(False), unet_b=unet_b.eval().requires_grad_(False),
                              spn=spn.eval().requires_grad_(False) if spn is not None else None,
                              latent_net=latent_net, clip=clip)
        self.spn_time_input = spn_time_input
        self.schedule = schedule or NoiseSchedule.linear()
        self.image_size = unet_a.config.image_size
        self.style_image = style_image

    # -- construction -----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, run: str | os.PathLike, *, torch_dtype: torch.dtype | str | None = None,
                        variant: str | None = None, diffae: str | os.PathLike | None = None, device=None, dtype=None,
                        **kw) -> "OSASISPipeline":
        """A trained style folder (``run/osasis.json``), the diffusers way: ``from_pretrained(run, torch_dtype=...)``
        then ``.to(device)``. ``diffae`` overrides the DiffAE model the run records."""
        torch_dtype, device = loading_keywords(torch_dtype, device, dtype)
        if variant is not None:
            raise InputError("OSASIS run folders have no weight variants (variant=...); leave it unset")
        pipe = cls._from_run(run, diffae=diffae, **kw)
        return move_to(pipe.to(torch_dtype) if torch_dtype is not None else pipe, device)

    @classmethod
    def from_run(cls, run: str | os.PathLike, *, diffae: str | os.PathLike | None = None, device=None,
                 **kw) -> "OSASISPipeline":
        """:meth:`from_pretrained` under its older name (``device=`` deprecated: call ``.to(device)``)."""
        if device is not None:
            deprecated("from_run(device=...)", "from_run(...).to(device)")
        return move_to(cls._from_run(run, diffae=diffae, **kw), device)

    @classmethod
    def _from_run(cls, run, *, diffae=None, **kw) -> "OSASISPipeline":
        run = Path(run)
        meta_path = run / RUN_FILE
        if not meta_path.exists():
            raise ModelNotFoundError(f"{run} is not an OSASIS run folder with a finished model (no {RUN_FILE}; train it first)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            raise ModelNotFoundError(f"{meta_path} is damaged (not an OSASIS run description)") from None
        diffae = diffae or meta.get("diffae")
        if not diffae:
            raise ModelNotFoundError("the run does not record its DiffAE model; pass it (diffae=... / --model)")
        unet_a = load_model(DiffAEAutoencoder, diffae)
        unet_b = load_model(DiffAEAutoencoder, run / "model" / "unet_b")
        spn_cls = StructurePreservingNetwork if meta.get("spn", "time") == "time" else PlainSPN
        spn = load_model(spn_cls, run / "model" / "spn") if (run / "model" / "spn").exists() else None
        return cls(unet_a, unet_b, spn, style_image=run / meta.get("style_image", "style.png"),
                   spn_time_input=meta.get("spn_time_input", "timestep"), **kw)

    @classmethod
    def from_official(cls, checkpoint: str | os.PathLike, *, diffae: str | os.PathLike, style_image: ImageLike,
                      device=None, **kw) -> "OSASISPipeline":
        """A released per-style checkpoint (``exp/imgN/ckpt/iter_200.pt``) with the artwork it was trained on.

        Loads on the CPU; ``.to(device)`` moves it (``device=`` is deprecated)."""
        if device is not None:
            deprecated("from_official(device=...)", "from_official(...).to(device)")
        unet_a = load_model(DiffAEAutoencoder, diffae)
        cfg = {k: v for k, v in unet_a.config.items() if not k.startswith("_")}
        obj = read_torch_file(checkpoint, "OSASIS checkpoint")  # read once: the released files are ~2 GB
        if "diffae_B" not in obj:
            raise ModelNotFoundError(f"{checkpoint} is not an official OSASIS checkpoint (no 'diffae_B' entry)")
        unet_b = strict_load(DiffAEAutoencoder(**{**cfg, "semantic_encoder": False}), obj["diffae_B"], what=str(checkpoint),
                             ignore_prefixes=("encoder.", "latent_net.")).eval()
        spn = None
        if obj.get("model_map"):  # --map_net --map_time (time SPN), --map_net alone (plain) or no SPN at all
            spn_cls = PlainSPN if any(k.startswith("layers.") for k in obj["model_map"]) else StructurePreservingNetwork
            spn = strict_load(spn_cls(), obj["model_map"], what=f"{checkpoint} (model_map)").eval()
        return move_to(cls(unet_a, unet_b, spn, style_image=style_image, spn_time_input="grid_index", **kw), device)

    def enable_memory_savers(self, *, low_memory: bool = False, offload: str | None = None,
                             gradient_checkpointing: bool | None = None,
                             device: torch.device | str | None = None, **not_applicable) -> MemorySavers:
        """The toolkit's memory savers where they apply to a pixel-space DiffAE (no VAE, 256-token attention).

        ``offload="model"``: eps_A and eps_B take turns on ``device`` (the SPN, CLIP and latent net stay there);
        ``"sequential"``: every layer streamed from the CPU. ``gradient_checkpointing``: eps_B's activations are
        recomputed in the backward of text-driven manipulation. ``low_memory``: model offload + checkpointing.
        """
        asked = [k for k, v in not_applicable.items() if v]
        if asked:
            raise InputError(f"OSASIS has no {', '.join(asked)} (a pixel-space model without a VAE or long attention)")
        savers = MemorySavers.from_options(low_memory=low_memory, offload=offload,
                                           gradient_checkpointing=gradient_checkpointing)
        device = torch.device(device) if device is not None else self.device
        self._offload_hooks = []
        if savers.offload != "none":
            # the semantic encoder runs outside eps_A's forward, so model offload hooks it on its own, first
            chain = {"unet_a": self.unet_a, "unet_b": self.unet_b}
            if savers.offload == "model":
                chain = {"encoder": self.unet_a.encoder, **chain}
            self._offload_hooks = offload_modules(chain, savers.offload, device)
            rest = {"spn": self.spn, "latent_net": self.latent_net, "clip": self.clip}
            if savers.offload == "sequential":
                offload_modules(rest, "sequential", device)
            else:
                for m in rest.values():
                    if m is not None:
                        m.to(device)
        self.unet_b.gradient_checkpointing = savers.gradient_checkpointing
        self.memory_savers = savers
        return savers

    def _offload_all(self) -> None:
        for hook in getattr(self, "_offload_hooks", []):
            hook.offload()

    @property
    def device(self) -> torch.device:
        return execution_device(self.unet_a)

    def _images(self, images, name: str) -> torch.Tensor:
        return images_to_tensor(images, self.image_size, name).to(device=self.device, dtype=self.unet_a.dtype)

    # -- stage 2 -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def semantic_codes(self, images: torch.Tensor) -> torch.Tensor:
        return self.unet_a.encode(images)

    def _mixing(self, z_in: torch.Tensor, z_style: torch.Tensor, s: StylizeSettings) -> dict:
        content, style = (z_style, z_in) if s.swap_codes else (z_in, z_style)
        return dict(cond=content, style_cond=style, styled_levels=self.unet_b.styled_levels_for(s.split_resolution),
                    style_middle=s.style_middle)

    def decode(self, x_t0: torch.Tensor, photos: torch.Tensor, spn_weight: float, plan: TimestepPlan, *,
               clamp: bool = True, progress=None, step_end: StepEnd | None = None, **cond) -> torch.Tensor:
        """Run eps_B (+ SPN) from x_t0 down the plan's decode grid; returns the final clean image."""
        x = x_t0
        steps = plan.decode_transitions()
        for i, (k, t, t_next) in enumerate(progress(steps) if progress else steps):
            x, _ = spn_decode_step(self.unet_b, self.spn, x, photos, k, t, t_next, self.schedule, spn_weight=spn_weight,
                                   spn_time_input=self.spn_time_input, clamp=clamp, **cond)
            if step_end:
                x = step_end(i, t, sample=x).pop("sample", x)
        return x

    @torch.no_grad()
    def stylize(self, photos, style=None, settings: StylizeSettings | None = None, *,
                content_codes: torch.Tensor | None = None, progress=None, step_end: StepEnd | None = None) -> torch.Tensor:
        """(B, 3, H, W) stylized images in [-1, 1]. ``content_codes`` replace z_in in the mixed decode only."""
        s = settings or StylizeSettings()
        plan = s.timestep_plan()
        photos = self._images(photos, "photo")
        style = self.style_image if style is None else style
        if style is None:
            raise InputError("no style image: pass one, or load a run that records it")
        z_style = self.semantic_codes(self._images(style, "style image"))  # one code, broadcast over the batch
        outs = []
        for i in range(0, photos.shape[0], s.batch_size):
            self._offload_all()  # with model offload: eps_B leaves the accelerator before eps_A encodes the batch
            batch = photos[i:i + s.batch_size]
            z_in = self.semantic_codes(batch)
            x_t0 = encode_to_t0(self.unet_a, batch, z_in, plan, self.schedule, clamp=s.clamp)
            z_content = z_in if content_codes is None else content_codes[i:i + s.batch_size].to(z_in)
            outs.append(self.decode(x_t0, batch, s.spn_weight, plan, clamp=s.clamp, progress=progress,
                                    step_end=step_end, **self._mixing(z_content, z_style, s)))
        self._offload_all()
        return check_finite(torch.cat(outs), "the stylized images")

    # -- text-driven manipulation (variant a) -----------------------------------------------------------------

    def edit_codes(self, photos, source_text: str, target_text: str, settings: StylizeSettings | None = None,
                   edit: EditSettings | None = None, *, progress=None) -> torch.Tensor:
        """z_in* minimising 1 - cos(v_text, E(I_opt) - E(I_in)) with eps_B, x_t0 and the SPN fixed.

        Each iteration decodes x_t0 along the inference plan with *unmixed* eps_B conditioning, takes the loss on
        every step's x0_hat (states detached, as stage 1 does) and makes one Adam step on the code.
        """
        if self.clip is None:
            raise InputError("text-driven manipulation needs a CLIP model (clip=...)")
        s, e = settings or StylizeSettings(), edit or EditSettings()
        plan = s.timestep_plan()
        photos = self._images(photos, "photo")
        with torch.no_grad():
            z0 = self.semantic_codes(photos)
            x_t0 = encode_to_t0(self.unet_a, photos, z0, plan, self.schedule, clamp=s.clamp)
            texts = self.clip.text([source_text, target_text])
            v_text = (texts[1] - texts[0])[None]
            e_in = self.clip(photos)
        normalized = e.code_space == "normalized"
        if normalized and self.latent_net is None:
            raise InputError("code_space='normalized' needs the latent statistics (latent_net=...); use 'raw'")
        to_code = self.latent_net.denormalize if normalized else (lambda v: v)
        start = self.latent_net.normalize(z0) if normalized else z0.clone()
        var = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([var], lr=e.lr)
        iterations = range(e.iterations)
        for _ in progress(iterations) if progress else iterations:
            opt.zero_grad(set_to_none=True)
            x = x_t0
            for k, t, t_next in plan.decode_transitions():
                x_next, x0 = spn_decode_step(self.unet_b, self.spn, x, photos, k, t, t_next, self.schedule,
                                             spn_weight=s.spn_weight, spn_time_input=self.spn_time_input,
                                             cond=to_code(var), clamp=s.clamp)
                loss = clip_text_direction_loss(self.clip(x0), e_in, v_text)
                if e.l2_weight:
                    loss = loss + e.l2_weight * (var - start).pow(2).sum(-1).mean()
                loss.backward()
                x = x_next.detach()
            opt.step()
        return to_code(var.detach())

    # -- images in, images out ------------------------------------------------------------------------------

    def __call__(self, image, style_image=None, settings: StylizeSettings | None = None, *,
                 num_inference_steps: int | None = None, generator: torch.Generator | None = None,
                 seed: int | None = None, output_type: str = "pil", callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] | None = None, edit_source: str | None = None,
                 edit_target: str | None = None, edit: EditSettings | None = None, progress=None) -> OSASISPipelineOutput:
        """Stylize ``image`` (a photo or a list/batch of them) with ``style_image`` (default: the run's artwork).

        ``num_inference_steps`` sets the decode steps (``settings.decode_steps``). Encoding and decoding are
        deterministic DDIM, so ``generator``/``seed`` change nothing (accepted for the common convention).
        ``callback_on_step_end`` receives the pixel-space ``sample`` after each decode step (per batch of
        ``settings.batch_size``). OSASIS works on pixels: ``output_type="latent"`` is refused.
        """
        check_output_type(output_type, has_latents=False)
        if (edit_source is None) != (edit_target is None):
            raise InputError("text-driven manipulation needs both --edit-source and --edit-target")
        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs)
        settings = settings or StylizeSettings()
        if num_inference_steps is not None:
            settings = dataclasses.replace(settings, decode_steps=int(num_inference_steps))
        photos = [load_image(item, name="photo") for item in as_items(image)]
        style = self.style_image if style_image is None else style_image
        style = load_image(style, name="style image") if style is not None else None
        codes = None
        if edit_source is not None:
            codes = self.edit_codes(photos, edit_source, edit_target, settings, edit, progress=progress)
        images = self.stylize(photos, style, settings, content_codes=codes, progress=progress, step_end=step_end)
        return OSASISPipelineOutput(postprocess(images, output_type), codes)


def list_inputs(path: str | os.PathLike, exts: Sequence[str] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")) -> list[Path]:
    """A single image, or the images of a folder (sorted by name)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in exts and not f.name.startswith("."))
        if not files:
            raise InputError(f"no images ({', '.join(exts)}) in {p}")
        return files
    if not p.exists():
        raise InputError(f"input not found: {p}")
    return [p]
