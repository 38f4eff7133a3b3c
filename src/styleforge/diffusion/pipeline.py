"""The base of every styleforge diffusion pipeline, and the generic inversion pipeline.

:class:`StyleforgePipeline` is a diffusers ``DiffusionPipeline`` with explicit components (vae, text encoder(s),
tokenizer(s), unet, scheduler). It adds what every method needs: loading with clear errors, the model family
(SD 1.x or SDXL), prompt encoding, image <-> latent conversion and the model id for metadata and cache keys.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from ..errors import InputError, ModelNotFoundError
from ..io import ImageLike, aspect_size, center_crop_resize, crop_pixels, load_image, pil_to_tensor, tensor_to_pil
from ..loading import DEFAULT_SD1_MODEL, DEFAULT_SDXL_MODEL, resolve_model_folder  # noqa: F401 (re-exported)
from .convention import diffusers_dtype_keyword, loading_keywords, move_to
from .memory import MemorySavers, apply_memory_savers, check_finite
from .prompts import Conditioning, PromptEncoder

SD1, SDXL = "sd1", "sdxl"


class StyleforgePipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["text_encoder_2", "tokenizer_2"]
    #: families a method supports; loading another is refused with a clear message
    supported_families: tuple[str, ...] = (SD1, SDXL)

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, text_encoder_2=None, tokenizer_2=None,
                 force_zeros_for_empty_prompt: bool = True):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        check_architecture(self, self.supported_families)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(cls, model: str | None = None, *, torch_dtype: torch.dtype | str | None = None,
                        variant: str | None = None, offline: bool | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | str | None = None, **kwargs):
        """Load from a hub id or a local diffusers folder; every failure is a one-line :class:`ModelNotFoundError`.

        The diffusers convention: ``from_pretrained(model, torch_dtype=..., variant=...)``, then ``.to(device)``.
        ``dtype=`` is a synonym of ``torch_dtype=``; ``device=`` still works, with a DeprecationWarning.
        """
        torch_dtype, device = loading_keywords(torch_dtype, device, dtype)
        model = str(model or getattr(cls, "default_model", DEFAULT_SD1_MODEL))
        folder = resolve_model_folder(model, offline=offline)
        if torch_dtype is not None:  # only when asked, and under the name this diffusers wants
            kwargs[diffusers_dtype_keyword()] = torch_dtype
        if variant is not None:
            kwargs["variant"] = variant
        try:
            pipe = super().from_pretrained(str(folder), local_files_only=True, **kwargs)
        except ArchitectureError as e:  # raised while constructing, before the pipeline knows its name
            raise e.for_model(model) from None
        except ModelNotFoundError:
            raise
        except Exception as e:  # missing component files, bad configs, unloadable weights
            first_line = (str(e).strip().splitlines() or ["its files cannot be read"])[0][:200]
            raise ModelNotFoundError(f"could not load model {model!r} (damaged or incomplete folder?): {first_line}") from None
        pipe.register_to_config(_name_or_path=model)
        pipe._weights_folder = str(folder)
        return move_to(pipe, device)

    # ------------------------------------------------------------------------------------------- memory

    def enable_memory_savers(self, *, low_memory: bool = False, offload: str | None = None,
                             vae_slicing: bool | None = None, vae_tiling: bool | None = None,
                             vae_tile_size: int | None = None, attention_chunk_size: int | None = None,
                             gradient_checkpointing: bool | None = None,
                             device: torch.device | str | None = None) -> MemorySavers:
        """Install memory savers (see :mod:`styleforge.diffusion.memory`); ``low_memory`` picks the 8 GB set.

        Offload and the VAE settings are installed now (``device``: the accelerator the offload hooks execute on,
        default the current one); the attention chunk and gradient checkpointing become this pipeline's defaults
        for the calls that use them (a call's own keyword wins).
        """
        savers = MemorySavers.from_options(low_memory=low_memory, offload=offload, vae_slicing=vae_slicing,
                                           vae_tiling=vae_tiling, vae_tile_size=vae_tile_size,
                                           attention_chunk_size=attention_chunk_size,
                                           gradient_checkpointing=gradient_checkpointing)
        return apply_memory_savers(self, savers, device)

    @property
    def memory_savers(self) -> MemorySavers:
        return getattr(self, "_memory_savers", None) or MemorySavers()

    @property
    def model_id(self) -> str:
        return str(getattr(self.config, "_name_or_path", "") or "components")

    @property
    def weights_fingerprint(self) -> str:
        """A hash of the weights this pipeline runs, for cache keys: of the files of the folder it was loaded from
        (remembered per file, so cheap), or of the modules' tensors when it was built from components."""
        from ..cache import folder_fingerprint, modules_fingerprint

        folder = getattr(self, "_weights_folder", None)
        if folder is None:  # components can be changed in place: hash them every time
            return modules_fingerprint(self.components)
        if getattr(self, "_folder_fingerprint", None) is None:
            self._folder_fingerprint = folder_fingerprint(folder)
        return self._folder_fingerprint

    @property
    def family(self) -> str:
        return SDXL if self.text_encoder_2 is not None else SD1

    @property
    def ddim_scheduler(self):
        """A DDIM scheduler with this model's training schedule (the grid and alphas every method samples on)."""
        from diffusers import DDIMScheduler

        if isinstance(self.scheduler, DDIMScheduler):
            return self.scheduler
        cached = getattr(self, "_ddim", None)
        if cached is None:
            cached = self._ddim = DDIMScheduler.from_config(self.scheduler.config)
        return cached

    @property
    def default_resolution(self) -> int:
        """The resolution the UNet was trained at (SD 1.5: 512, SDXL: 1024)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    # ------------------------------------------------------------------------------------------- prompts

    @property
    def prompt_encoder(self) -> PromptEncoder:
        return PromptEncoder([self.tokenizer, self.tokenizer_2], [self.text_encoder, self.text_encoder_2],
                             force_zeros_for_empty_prompt=bool(self.config.force_zeros_for_empty_prompt))

    def encode_prompt(self, prompt: str | list[str], *, negative: bool = False, height: int | None = None,
                      width: int | None = None) -> Conditioning:
        cond = self.prompt_encoder(prompt, negative=negative).to(self._execution_device, self.unet.dtype)
        if self.family == SDXL:
            size = self.default_resolution
            cond = cond.with_size(height or size, width or size)
        return cond

    # ------------------------------------------------------------------------------------------- images

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor times the UNet's total downsampling (SD: 64)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.down_block_types) - 1)

    #: which side of the image the model's resolution (or ``size``) sets when the aspect ratio is kept
    working_side = "short"

    def working_size(self, image_size: tuple[int, int], size: int | tuple[int, int] | None = None, *,
                     crop: bool = False) -> tuple[int, int]:
        """(w, h) to process an image of ``image_size`` at: its aspect ratio with the shorter side (``working_side``)
        at ``size`` (default: the model's resolution), both sides multiples of ``size_multiple``; with ``crop`` a
        square of that side; a (w, h) ``size`` as given."""
        m = self.size_multiple
        if isinstance(size, (tuple, list)):
            w, h = (int(x) for x in size)
        else:
            w = h = int(size or self.default_resolution)
        if w <= 0 or h <= 0 or w % m or h % m:
            raise InputError(f"the working size must be positive multiples of {m} for this model, got {w}x{h}")
        if isinstance(size, (tuple, list)) or crop:
            return w, h
        return aspect_size(image_size, w, m, fit=self.working_side)

    def preprocess(self, image: ImageLike, size: int | tuple[int, int] | None = None, *, name: str = "image",
                   crop: bool = False, why: str = "", resample: int = Image.BICUBIC) -> torch.Tensor:
        """Load and resize to :meth:`working_size`; (1, 3, H, W) in [-1, 1]. A target whose aspect ratio differs
        from the image's by less than the rounding of its sides (``size_multiple``) is reached by resizing alone;
        otherwise (``crop``, a (w, h) ``size`` of another shape) the centre is cropped, with a warning ending in
        ``why``. ``resample``: a PIL filter (default bicubic; pix2pix-zero's code resizes with LANCZOS)."""
        from ..validation import check_working_size

        img = load_image(image, name=name)
        target = self.working_size(img.size, size, crop=crop)
        check_working_size(*target, f"the {name}'s working size")
        if crop_pixels(img.size, target) < self.size_multiple:  # only the rounding of the sides: no crop
            return pil_to_tensor(img.resize(target, resample) if img.size != target else img)
        warnings.warn(f"the {name} ({img.size[0]}x{img.size[1]}) is centre-cropped to the aspect ratio of "
                      f"{target[0]}x{target[1]}{why}", stacklevel=2)
        return pil_to_tensor(center_crop_resize(img, target, resample))

    def _vae_dtype(self) -> torch.dtype:
        # SDXL's VAE overflows in fp16 (config force_upcast): run it in fp32 then
        if self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            return torch.float32
        return self.vae.dtype

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
        """Images in [-1, 1] to scaled latents (posterior mode by default, as the methods' official code does)."""
        dtype = self._vae_dtype()
        vae = self.vae.to(dtype) if dtype != self.vae.dtype else self.vae
        dist = vae.encode(images.to(self._execution_device, dtype)).latent_dist
        latents = dist.sample(generator) if sample else dist.mode()
        return (latents * vae.config.scaling_factor).to(self.unet.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents to images in [-1, 1]; NaNs (fp16 overflow) are refused with advice, never saved as black."""
        check_finite(latents, "the latents")
        dtype = self._vae_dtype()
        vae = self.vae.to(dtype) if dtype != self.vae.dtype else self.vae
        return vae.decode(latents.to(self._execution_device, dtype) / vae.config.scaling_factor).sample.float()

    def to_pil(self, images: torch.Tensor):
        return tensor_to_pil(images)

    def metadata(self, method: str, **params: Any) -> dict[str, Any]:
        """What a PNG stores so the result can be reproduced."""
        from .. import __version__

        return {"method": method, "model": self.model_id, "dtype": str(self.unet.dtype).replace("torch.", ""),
                "styleforge": __version__, "params": params}


class ArchitectureError(ModelNotFoundError):
    """A model the method cannot run; the message names the model once its name is known."""

    def __init__(self, name: str | None, problem: str):
        self.problem = problem
        super().__init__(f"model {name!r} {problem}" if name else f"these components: {problem}")

    def for_model(self, name: str) -> "ArchitectureError":
        return ArchitectureError(name, self.problem)


def check_architecture(pipe, families: tuple[str, ...]) -> None:
    from diffusers import UNet2DConditionModel

    name = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    if not isinstance(pipe.unet, UNet2DConditionModel):
        raise ArchitectureError(name, f"has an unsupported architecture ({type(pipe.unet).__name__}); "
                                      "styleforge needs a Stable Diffusion 1.x or SDXL UNet2DConditionModel")
    family = SDXL if pipe.text_encoder_2 is not None else SD1
    if (pipe.unet.config.addition_embed_type == "text_time") != (family == SDXL):
        raise ArchitectureError(name, "has an unsupported architecture: its UNet and text encoders do not form a "
                                      "Stable Diffusion 1.x or SDXL model")
    if getattr(pipe.scheduler.config, "prediction_type", "epsilon") != "epsilon":
        raise ArchitectureError(name, f"predicts {pipe.scheduler.config.prediction_type!r}; styleforge's samplers need "
                                      "an epsilon-prediction model (SD 1.x, SDXL base)")
    if family not in families:
        raise ArchitectureError(name, f"is {family.upper()}-shaped; this method supports "
                                      f"{', '.join(f.upper() for f in families)}")


@dataclass
class InversionOutput:
    inversion: Any  # styleforge.diffusion.inversion.Inversion
    reconstruction: Any  # list of PIL images


class InversionPipeline(StyleforgePipeline):
    """Invert an image (DDIM or edit-friendly DDPM) and reconstruct it: the shared inversion as a pipeline."""

    default_model = DEFAULT_SD1_MODEL

    @torch.no_grad()
    def __call__(self, image: ImageLike, prompt: str = "", *, kind: str = "edit_friendly", num_inference_steps: int = 50,
                 guidance_scale: float = 1.0, negative_prompt: str = "", size: int | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None, cache=None, eta: float = 1.0,
                 zero_last_noise: bool = True) -> InversionOutput:
        from .inversion import DDIM, EDIT_FRIENDLY, NOISE_DRAWS, ddim_invert, edit_friendly_invert, image_hash
        from .sampling import ddim_sample, edit_friendly_sample, noise_predictor

        from .. import validation as V

        if kind not in (DDIM, EDIT_FRIENDLY):
            raise InputError(f"kind must be {DDIM!r} or {EDIT_FRIENDLY!r}, got {kind!r}")
        V.check_all(num_inference_steps=(num_inference_steps, V.steps), guidance_scale=(guidance_scale, V.finite),
                    eta=(eta, V.non_negative), size=(size, V.optional_size))
        pixels = self.preprocess(image, size)
        h, w = pixels.shape[-2:]
        cond = self.encode_prompt(prompt, height=h, width=w)
        uncond = self.encode_prompt(negative_prompt, negative=True, height=h, width=w) if guidance_scale != 1.0 else None
        eps_fn = noise_predictor(self.unet, cond, uncond=uncond, guidance_scale=guidance_scale)
        settings = dict(prompt=prompt, negative_prompt=negative_prompt, guidance_scale=float(guidance_scale),
                        seed=seed, model_id=self.model_id, family=self.family, image_hash=image_hash(pixels),
                        weights=self.weights_fingerprint if cache is not None else "",
                        extra={"dtype": str(self.unet.dtype)} | ({"zero_last_noise": zero_last_noise, "noise_draws": NOISE_DRAWS}
                                                                  if kind == EDIT_FRIENDLY else {}))
        key = dict(settings, kind=kind, num_inference_steps=num_inference_steps, eta=eta if kind == EDIT_FRIENDLY else 0.0)
        inv = cache.get(**key) if cache is not None else None
        if inv is None:
            x0 = self.encode_images(pixels)
            if kind == DDIM:
                inv = ddim_invert(eps_fn, x0, self.ddim_scheduler, num_inference_steps, progress=self.progress_bar, **settings)
            else:
                if generator is None and seed is not None:
                    generator = torch.Generator("cpu").manual_seed(seed)
                inv = edit_friendly_invert(eps_fn, x0, self.ddim_scheduler, num_inference_steps, generator=generator, eta=eta,
                                           zero_last_noise=zero_last_noise, progress=self.progress_bar, **settings)
            if cache is not None:
                cache.put(inv)
        x, timesteps, noise = inv.start(0)
        x = x[None].to(self._execution_device, self.unet.dtype)
        if kind == DDIM:
            x0 = ddim_sample(eps_fn, x, self.ddim_scheduler, timesteps, num_inference_steps, progress=self.progress_bar)
        else:
            x0 = edit_friendly_sample(eps_fn, x, self.ddim_scheduler, timesteps, noise[:, None], num_inference_steps, eta=eta,
                                      progress=self.progress_bar)
        images = self.to_pil(self.decode_latents(x0))
        self.maybe_free_model_hooks()  # with model offload: every model back off the accelerator (diffusers' convention)
        return InversionOutput(inv, images)
