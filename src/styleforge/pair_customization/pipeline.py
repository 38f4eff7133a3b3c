"""PairCustomization inference: style guidance on the unmodified base model (spec §4).

Per sampling step (paper Eq. 10, and Eq. 11 for several styles):

    eps = eps_0(x, {}) + g_cfg [eps_0(x, c) - eps_0(x, {})] + sum_i g_i [eps_{style_i}(x, c_style_i) - eps_0(x, c)]

eps_0 is the base model (adapters off), eps_{style_i} the base model plus style adapter i only, c the user's prompt
and c_style_i = "{c} in {desc_i} style". Style guidance runs from the first step by default, as the official
text-to-image pipeline does (its ``start_LoRA_step`` is only read on its LoRA-scale path); the first
``style_start_step`` steps can run plain CFG instead (the structure lock of paper §4, "SDEdit"-like, 10 of 50), or
every step whose timestep exceeds ``style_start_timestep``. A style at scale 0 is skipped, so scale 0 is plain CFG
exactly.

Real photos (spec §4.7): DDIM inversion with the conditional base prediction on the photo's prompt, then DDIM
regeneration from the inverted latent with the negative prompt equal to the prompt, so the CFG term vanishes:
eps = eps_0(x, c) + sum_i g_i [eps_{style_i}(x, c_style_i) - eps_0(x, c)].
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..diffusion.convention import (StepEnd, call_per_item, check_output_type, generator_for, is_batch, per_image,
                                    postprocess)
from ..diffusion.inversion import DDIM, ddim_invert, image_hash
from ..diffusion.pipeline import SD1, SDXL, StyleforgePipeline
from ..diffusion.prompts import Conditioning
from ..diffusion.sampling import alpha_pair, ddim_step
from .. import validation as V
from ..errors import InputError
from ..io import ImageLike
from ..loading import DEFAULT_SD1_MODEL
from .adapters import DEFAULT_TARGETS, UNetAdapters, find_targets
from .constants import SCHEDULERS
from .style_io import StyleAdapter

#: classifier-free guidance per family: SD 1.5 convention / the paper's SDXL value (spec §9)
DEFAULT_GUIDANCE = {SD1: 7.5, SDXL: 5.0}


@dataclass
class PairCustomizationOutput:
    images: Any  # stylized images as ``output_type`` asks (PIL list, array, tensor or latents)
    base_images: Any = per_image(default=None)  # the unstyled images from the same seed, same type (return_base=True)
    latents: torch.Tensor | None = None  # final stylized latents
    unet_rows: int = 0  # UNet row-evaluations spent in the sampling loops


@dataclass
class GuidanceState:
    """The encoded prompts of one sampling call."""

    cond: Conditioning
    uncond: Conditioning | None  # None: negative == prompt (edit mode: the CFG term vanishes)
    guidance_scale: float
    styles: list[tuple[str, float, Conditioning]] = field(default_factory=list)  # (adapter, scale, c_style)
    lora_scale: float = 1.0
    mode: str = "style_guidance"  # or "lora_scale": the paper's baseline inference (Eq. 3)


GUIDANCE_MODES = ("style_guidance", "lora_scale")


def make_scheduler(name: str, base_config) -> object:
    """A diffusers scheduler of kind ``name`` with the model's training schedule (leading spacing as SD/SDXL)."""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, PNDMScheduler)

    if name not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if name == "pndm":
        return PNDMScheduler.from_config(base_config, skip_prk_steps=True)  # the SD 1.5 stock PLMS configuration
    if name == "ddim":
        return DDIMScheduler.from_config(base_config, clip_sample=False)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(base_config)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(base_config)
    return DPMSolverMultistepScheduler.from_config(base_config)


class PairCustomizationPipeline(StyleforgePipeline):
    """Text-to-image (and real-photo) generation with one or more learned PairCustomization styles.

    >>> pipe = PairCustomizationPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    >>> pipe.load_style("mystyle/")
    >>> out = pipe("a photo of a dog", style_scale=3.0, seed=0, return_base=True)
    """

    default_model = DEFAULT_SD1_MODEL
    supported_families = (SD1, SDXL)
    _callback_tensor_inputs = ["latents"]

    # ------------------------------------------------------------------------------------------- styles

    @property
    def styles(self) -> dict[str, StyleAdapter]:
        if not hasattr(self, "_styles"):
            self._styles: dict[str, StyleAdapter] = {}
        return self._styles

    @property
    def adapters(self) -> UNetAdapters | None:
        return getattr(self, "_adapters", None)

    def load_style(self, style: str | StyleAdapter, name: str | None = None, *, style_word: str | None = None) -> str:
        """Attach a style (folder, ``.safetensors`` file or :class:`StyleAdapter`) under ``name``; returns the name.

        ``style_word`` names the style in the prompt suffix "in <word> style"; it is required for LoRA files saved
        by other tools (the official PairCustomization script stores none) and overrides a style's own word.
        """
        adapter = style if isinstance(style, StyleAdapter) else StyleAdapter.load(style)
        name = _adapter_name(name or adapter.metadata.get("name") or f"style{len(self.styles)}")
        if name in self.styles:
            raise InputError(f"a style named {name!r} is already loaded; pass another name")
        if style_word is not None:
            adapter.metadata["style_word"] = style_word
        if not adapter.style_word:
            raise InputError(f"{name} carries no style word (a LoRA saved outside styleforge): give it with "
                             "--style-word / style_word=, e.g. the official run's 'in <WORDS> style' suffix words")
        targets = tuple(adapter.metadata.get("targets", DEFAULT_TARGETS))
        if self.adapters is None:
            self._adapters = UNetAdapters(self.unet, targets)
        elif set(find_targets(self.unet, targets)) != set(self.adapters.names):  # same layers, in any order
            raise InputError(f"style {name!r} adapts {targets}, the loaded styles adapt {self.adapters.targets}")
        adapter.metadata.setdefault("name", name)
        adapter.check_compatible(self.family, self.adapters.widths, self.model_id)
        self.adapters.add_from_tensors(name, adapter.tensors, adapter.alpha, dtype=self.unet.dtype)
        self.styles[name] = adapter
        return name

    def unload_style(self, name: str) -> None:
        if name not in self.styles:
            raise InputError(f"no style named {name!r} is loaded")
        self.adapters.delete(name)
        del self.styles[name]

    # ------------------------------------------------------------------------------------------- guidance

    def prepare_guidance(self, prompt: str, *, styles: Sequence[str] | str | None = None,
                         style_scale: float | Sequence[float] | Mapping[str, float] = 3.0,
                         guidance_scale: float | None = None, negative_prompt: str | None = "",
                         lora_scale: float = 1.0, height: int | None = None, width: int | None = None,
                         mode: str = "style_guidance") -> GuidanceState:
        """Encode c, the unconditional/negative prompt and c_style per style; resolve each style's scale.

        ``negative_prompt=None`` means "equal to the prompt" (the real-image edit mode: no CFG term).
        ``mode="lora_scale"``: the baseline of paper Eq. 3 / spec §4.5, where the style scale is the LoRA strength
        alpha in [0, 1] and guided steps run ordinary CFG on W0 + alpha dW with the stylized prompt in both branches.
        """
        if mode not in GUIDANCE_MODES:
            raise InputError(f"mode must be one of {GUIDANCE_MODES}, got {mode!r}")
        scales = self._style_scales(styles, style_scale)
        if mode == "lora_scale" and sum(1 for v in scales.values() if v != 0) > 1:
            raise InputError("lora_scale mode applies one style at a time")
        cond = self.encode_prompt(prompt, height=height, width=width)
        guidance_scale = DEFAULT_GUIDANCE[self.family] if guidance_scale is None else float(guidance_scale)
        uncond = None
        if negative_prompt is not None and negative_prompt != prompt and guidance_scale != 1.0:
            uncond = self.encode_prompt(negative_prompt, negative=True, height=height, width=width)
        elif negative_prompt is not None and negative_prompt != prompt:
            guidance_scale = 1.0  # lambda_cfg = 1: eps_0(x, c) exactly, the unconditional pass is skipped (spec §4.2)
        style_items = [(name, lam, self.encode_prompt(self.styles[name].prompt_for(prompt), height=height, width=width))
                       for name, lam in scales.items()]
        return GuidanceState(cond, uncond, guidance_scale, style_items, float(lora_scale), mode)

    def _style_scales(self, styles, style_scale) -> dict[str, float]:
        if isinstance(styles, str):
            styles = [styles]
        if isinstance(style_scale, Mapping):
            names = list(styles) if styles is not None else list(style_scale)
            missing = [n for n in names if n not in style_scale]
            if missing:
                raise InputError(f"no style scale given for {missing}")
            scales = {n: float(style_scale[n]) for n in names}
        else:
            names = list(styles) if styles is not None else list(self.styles)
            if isinstance(style_scale, (int, float)):
                scales = {n: float(style_scale) for n in names}
            else:
                values = [float(v) for v in style_scale]
                if len(values) == 1:
                    values = values * len(names)
                if len(values) != len(names):
                    raise InputError(f"{len(values)} style scales for {len(names)} styles")
                scales = dict(zip(names, values))
        unknown = [n for n in scales if n not in self.styles]
        if unknown:
            raise InputError(f"unknown style(s) {unknown}; loaded: {sorted(self.styles) or 'none'} (use load_style)")
        return scales

    def guided_noise(self, state: GuidanceState, x: torch.Tensor, t, *, apply_style: bool = True) -> torch.Tensor:
        """The guided prediction of Eq. 10/11 for model input ``x`` at ``t`` (float32)."""
        unet, dtype = self.unet, self.unet.dtype
        b = x.shape[0]
        if apply_style and state.mode == "lora_scale":
            active = [(name, alpha, c_style) for name, alpha, c_style in state.styles if alpha != 0]
            if active:
                name, alpha, c_style = active[0]
                with self.adapters.active({name: alpha}):
                    return self._cfg(GuidanceState(c_style, state.uncond, state.guidance_scale), x, t)
        with _base_model(self.adapters):
            if state.uncond is None or state.guidance_scale == 1.0:
                e_c = unet(x.to(dtype), t, **state.cond.unet_kwargs(b)).sample.float()
                eps = e_c
            else:
                both = Conditioning.cat([state.uncond.repeat(b) if len(state.uncond) != b else state.uncond,
                                         state.cond.repeat(b) if len(state.cond) != b else state.cond])
                e_u, e_c = unet(torch.cat([x, x]).to(dtype), t, **both.unet_kwargs()).sample.float().chunk(2)
                eps = e_u + state.guidance_scale * (e_c - e_u)
        if apply_style:
            for name, lam, c_style in state.styles:
                if lam == 0:
                    continue  # exact plain CFG at scale 0, and one UNet pass saved
                with self.adapters.active({name: state.lora_scale}):
                    e_s = unet(x.to(dtype), t, **c_style.unet_kwargs(b)).sample.float()
                eps = eps + lam * (e_s - e_c)
        return eps

    def _cfg(self, state: GuidanceState, x, t) -> torch.Tensor:
        unet, b = self.unet, x.shape[0]
        if state.uncond is None or state.guidance_scale == 1.0:
            return unet(x.to(unet.dtype), t, **state.cond.unet_kwargs(b)).sample.float()
        both = Conditioning.cat([state.uncond.repeat(b) if len(state.uncond) != b else state.uncond,
                                 state.cond.repeat(b) if len(state.cond) != b else state.cond])
        e_u, e_c = unet(torch.cat([x, x]).to(unet.dtype), t, **both.unet_kwargs()).sample.float().chunk(2)
        return e_u + state.guidance_scale * (e_c - e_u)

    def unet_rows_per_step(self, state: GuidanceState, apply_style: bool) -> int:
        base = 1 if state.uncond is None or state.guidance_scale == 1.0 else 2
        if state.mode == "lora_scale":
            return base
        return base + (sum(1 for _, lam, _ in state.styles if lam != 0) if apply_style else 0)

    # ------------------------------------------------------------------------------------------- sampling

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        *,
        styles: Sequence[str] | str | None = None,
        style_scale: float | Sequence[float] | Mapping[str, float] = 3.0,
        guidance_scale: float | None = None,
        negative_prompt: str | None = "",
        num_inference_steps: int = 50,
        scheduler: str | None = None,
        style_start_step: int | None = None,
        style_start_timestep: int | None = None,
        lora_scale: float = 1.0,
        mode: str = "style_guidance",
        height: int | None = None,
        width: int | None = None,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        image: ImageLike | None = None,
        inversion_steps: int | None = None,
        inversion_cache=None,
        return_base: bool = False,
        output_type: str = "pil",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> PairCustomizationOutput:
        """Generate ``prompt`` with style guidance from the loaded styles (or the ones named in ``styles``).

        ``style_scale``: one lambda_style for all styles, one per style, or ``{name: scale}`` (blending, Eq. 11).
        ``guidance_scale``: lambda_cfg (default 7.5 on SD 1.x, 5 on SDXL). ``style_start_step``: plain-CFG steps
        before style guidance starts (default 0, the official code; the paper locks 10 of 50);
        ``style_start_timestep``: instead, plain CFG while t > this value.
        ``scheduler``: euler (the default: the official code samples with SDXL's own scheduler), pndm (paper), ddim,
        euler_a, dpm; a real ``image`` is always regenerated with DDIM. With ``image``, the photo is
        DDIM-inverted on ``prompt`` (which should describe it) and regenerated with DDIM; ``negative_prompt=None``
        (the default for images) makes the CFG term vanish, as the official real-image script does.
        ``return_base`` also returns the unstyled image from the same noise (for a photo: its reconstruction); it
        shares the locked steps with the stylized run. ``callback_on_step_end(pipe, step, t, {"latents": ...})``
        after every step (once per step; the locked steps shared with ``return_base`` are reported from the base
        run) may return replacement ``latents``; the deprecated ``callback(step_index, t, latents)`` still works.
        ``mode="lora_scale"`` is the paper's comparison baseline (style_scale = LoRA strength alpha, spec §4.5).
        Lists of prompts (and/or images) run one generation per item.
        """
        if is_batch(prompt) or is_batch(image):
            return call_per_item(self, locals(), ("prompt", "image"))
        check_output_type(output_type)
        callback = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs, callback,
                           lambda fn, i, t, tensors: fn(i, int(t), tensors["latents"]))
        scales = style_scale.values() if isinstance(style_scale, Mapping) else (
            style_scale if isinstance(style_scale, (list, tuple)) else [style_scale])
        for scale in scales:
            V.finite.check(scale, "style_scale")
        V.check_all(num_inference_steps=(num_inference_steps, V.steps), guidance_scale=(guidance_scale, V.optional_finite),
                    lora_scale=(lora_scale, V.finite), style_start_step=(style_start_step, V.Number(int, 0, optional=True)),
                    style_start_timestep=(style_start_timestep, V.Number(int, 0, optional=True)),
                    height=(height, V.optional_side), width=(width, V.optional_side))
        if not self.styles and styles is None:
            raise InputError("no style loaded: call load_style(path) first")
        device = self._execution_device
        if self.adapters is not None:  # the adapters are not UNet submodules: follow a later pipe.to(device)
            self.adapters.to(device)
        if image is not None:
            return self._stylize_image(prompt, image, styles=styles, style_scale=style_scale, guidance_scale=guidance_scale,
                                       negative_prompt=negative_prompt if negative_prompt != "" else None,
                                       num_inference_steps=num_inference_steps, scheduler=scheduler or "ddim",
                                       style_start_step=0 if style_start_step is None else style_start_step,
                                       style_start_timestep=style_start_timestep, lora_scale=lora_scale, mode=mode,
                                       size=(width, height) if width and height else (width or height),
                                       inversion_steps=inversion_steps, inversion_cache=inversion_cache,
                                       return_base=return_base, output_type=output_type, callback=callback)
        height = height or self.default_resolution
        width = width or self.default_resolution
        V.check_working_size(width, height, "the image")
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise InputError(f"height and width must be multiples of {self.vae_scale_factor}, got {width}x{height}")
        state = self.prepare_guidance(prompt, styles=styles, style_scale=style_scale, guidance_scale=guidance_scale,
                                      negative_prompt=negative_prompt if negative_prompt is not None else "",
                                      lora_scale=lora_scale, height=height, width=width, mode=mode)
        sched = make_scheduler(scheduler or "euler", self.scheduler.config)
        sched.set_timesteps(num_inference_steps, device=device)
        generator = generator_for(generator, seed)
        shape = (1, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        latents = latents.to(device, torch.float32) * sched.init_noise_sigma
        stepper = _DiffusersStepper(sched, generator)
        lock = _locked_steps(sched.timesteps, style_start_step or 0, style_start_timestep)
        return self._run(state, latents, stepper, lock, return_base, output_type, callback)

    def _run(self, state: GuidanceState, latents, stepper, lock: int, return_base: bool, output_type: str,
             callback) -> PairCustomizationOutput:
        """Sample; with ``return_base`` the base run is branched after the shared locked steps."""
        n = len(stepper.timesteps)
        rows = 0
        base_latents = None
        if return_base:
            x, st = latents, stepper
            snapshot = (latents, copy.deepcopy(stepper)) if lock == 0 else None
            for i in self.progress_bar(range(n)):
                x = self._step(state, x, st, i, apply_style=False)
                rows += self.unet_rows_per_step(state, False)
                if callback and i < lock:  # a shared step: reported (and changeable) before the branch
                    x = callback(i, st.timesteps[i], latents=x).pop("latents", x)
                if i + 1 < n and i + 1 == lock:
                    snapshot = (x, copy.deepcopy(st))
            base_latents = x
            start = min(lock, n)
            if snapshot is None:  # everything was locked: the stylized run is the base run
                styled, latents_out = None, base_latents
            else:
                latents, stepper = snapshot
                styled = True
        else:
            start, styled = 0, True
        if styled:
            x = latents
            for i in self.progress_bar(range(start, n)):
                x = self._step(state, x, stepper, i, apply_style=i >= lock)
                rows += self.unet_rows_per_step(state, i >= lock)
                if callback:
                    x = callback(i, stepper.timesteps[i], latents=x).pop("latents", x)
            latents_out = x
        images = self._output(latents_out, output_type)
        base = self._output(base_latents, output_type) if return_base else None
        self.maybe_free_model_hooks()  # with model offload: every model back off the accelerator (diffusers' convention)
        return PairCustomizationOutput(images, base, latents_out, rows)

    def _step(self, state, x, stepper, i: int, *, apply_style: bool):
        t = stepper.timesteps[i]
        eps = self.guided_noise(state, stepper.scale(x, t), t, apply_style=apply_style)
        return stepper.step(eps, t, x, i)

    def _output(self, latents, output_type):
        if output_type == "latent":
            return latents
        return postprocess(self.decode_latents(latents.to(self.unet.dtype)), output_type)

    # ------------------------------------------------------------------------------------------- real photos

    def invert(self, image: ImageLike, prompt: str, *, num_inference_steps: int = 50, size=None, cache=None):
        """DDIM inversion of a photo with the base model's conditional prediction on ``prompt`` (spec §4.7 step 1)."""
        pixels = self.preprocess(image, size, name="image")
        h, w = pixels.shape[-2:]
        cond = self.encode_prompt(prompt, height=h, width=w)
        state = GuidanceState(cond, None, 1.0)
        settings = dict(prompt=prompt, negative_prompt=prompt, guidance_scale=0.0, seed=None, model_id=self.model_id,
                        weights=self.weights_fingerprint if cache is not None else "",
                        image_hash=image_hash(pixels), extra={"dtype": str(self.unet.dtype), "method": "pair"})
        inv = cache.get(kind=DDIM, num_inference_steps=num_inference_steps, eta=0.0, **settings) if cache else None
        if inv is None:
            x0 = self.encode_images(pixels).float()
            with _base_model(self.adapters):
                inv = ddim_invert(lambda x, t: self.guided_noise(state, x, t, apply_style=False), x0, self.ddim_scheduler,
                                  num_inference_steps, progress=self.progress_bar, **settings)
            if cache is not None:
                cache.put(inv)
        return inv, (h, w)

    def _stylize_image(self, prompt, image, *, styles, style_scale, guidance_scale, negative_prompt, num_inference_steps,
                       scheduler, style_start_step, style_start_timestep, lora_scale, mode, size, inversion_steps,
                       inversion_cache, return_base, output_type, callback) -> PairCustomizationOutput:
        if scheduler not in ("ddim", "pndm"):
            raise InputError("a real image is regenerated with DDIM (the inverse of its inversion); use scheduler='ddim'")
        steps = inversion_steps or num_inference_steps
        if steps != num_inference_steps:
            raise InputError("inversion_steps must equal num_inference_steps (the regeneration retraces the inversion grid)")
        inv, (h, w) = self.invert(image, prompt, num_inference_steps=steps, size=size, cache=inversion_cache)
        state = self.prepare_guidance(prompt, styles=styles, style_scale=style_scale, guidance_scale=guidance_scale,
                                      negative_prompt=negative_prompt, lora_scale=lora_scale, height=h, width=w,
                                      mode=mode)
        stepper = _DDIMGridStepper(self.ddim_scheduler, inv.timesteps.to(self._execution_device), steps)
        latents = inv.latents[:1].to(self._execution_device, torch.float32)
        lock = _locked_steps(stepper.timesteps, style_start_step, style_start_timestep)
        return self._run(state, latents, stepper, lock, return_base, output_type, callback)


# ----------------------------------------------------------------------------------------------- helpers


class _DiffusersStepper:
    """A diffusers scheduler's ``scale_model_input`` / ``step`` (PNDM, Euler, DPM-Solver, ...)."""

    def __init__(self, scheduler, generator):
        self.scheduler, self.generator = scheduler, generator
        self.timesteps = scheduler.timesteps

    def scale(self, x, t):
        return self.scheduler.scale_model_input(x, t)

    def step(self, eps, t, x, i):
        import inspect

        kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:  # ancestral samplers draw noise
            kwargs["generator"] = self.generator if self.generator is not None and self.generator.device == x.device else None
        return self.scheduler.step(eps, t, x, return_dict=True, **kwargs).prev_sample

    def __deepcopy__(self, memo):  # the branch point copies the scheduler's multistep history and the RNG state
        gen = None
        if self.generator is not None:
            gen = torch.Generator(self.generator.device)
            gen.set_state(self.generator.get_state())
        return _DiffusersStepper(copy.deepcopy(self.scheduler, memo), gen)


class _DDIMGridStepper:
    """The shared DDIM step on the inversion's grid: regeneration retraces :func:`ddim_invert` exactly."""

    def __init__(self, scheduler, timesteps, num_inference_steps):
        self.scheduler, self.timesteps, self.n = scheduler, timesteps, num_inference_steps

    def scale(self, x, t):
        return x

    def step(self, eps, t, x, i):
        a_t, a_prev = (a.to(x.device) for a in alpha_pair(self.scheduler, t, self.n))
        return ddim_step(x, eps, a_t, a_prev)

    def __deepcopy__(self, memo):
        return self  # stateless


def _locked_steps(timesteps: torch.Tensor, style_start_step: int, style_start_timestep: int | None) -> int:
    """Number of initial steps with plain CFG: a count, or the number of timesteps above a threshold."""
    if style_start_timestep is not None:
        return int((timesteps > style_start_timestep).sum())
    if style_start_step < 0:
        raise InputError(f"style_start_step must be >= 0, got {style_start_step}")
    return int(style_start_step)


class _base_model:
    """Adapters off (the base model) for the enclosed calls; a no-op when no adapter is attached."""

    def __init__(self, adapters):
        self.cm = adapters.active({}) if adapters is not None else None

    def __enter__(self):
        return self.cm.__enter__() if self.cm is not None else None

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc) if self.cm is not None else False


def _adapter_name(name: str) -> str:
    return str(name).replace(".", "_").strip() or "style"


def plain_timesteps(scheduler_name: str, base_config, num_inference_steps: int) -> torch.Tensor:
    """The timesteps a scheduler visits (to choose a ``style_start_timestep``)."""
    sched = make_scheduler(scheduler_name, base_config)
    sched.set_timesteps(num_inference_steps)
    return sched.timesteps.clone()

