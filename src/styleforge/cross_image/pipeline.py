"""Cross-Image Attention pipeline: the look of one image on the structure of another, zero-shot.

Algorithm (paper §3-4, with the official code's defaults; spec cross_image_attention.md):

1. Invert both images with edit-friendly DDPM inversion (appearance first, then structure, from one generator).
2. Denoise three latents together, rows [OUT, APP, STRUCT], from step S on. OUT starts at the structure's
   noisy latent and follows the structure's noise maps.
3. In the decoder self-attention layers at the two finest resolutions, OUT's queries attend to APP's keys and
   values (Eq. 2), the map sharpened by the contrast (Eq. 3); on a few early steps STRUCT's instead (Eq. 6).
4. Appearance guidance (Eq. 4): eps = eps_self + alpha_i (eps_cross - eps_self), alpha decaying (code) or constant.
5. After each update in the AdaIN window, OUT takes APP's per-channel latent statistics (Eq. 5), inside the
   object masks (self-segmented, or given by the user).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..diffusion.adain import adain as adain_fn
from ..diffusion.adain import masked_adain
from ..diffusion.attention import AttentionController, finest_factors
from ..diffusion.convention import (StepEnd, call_per_item, check_output_type, generator_for, is_batch, per_image,
                                    postprocess)
from ..diffusion.freeu import FreeUConfig, apply_freeu
from ..diffusion.inversion import EDIT_FRIENDLY, NOISE_DRAWS, Inversion, draw_noise_maps, edit_friendly_invert, image_hash
from ..diffusion.pipeline import SD1, SDXL, StyleforgePipeline
from ..diffusion.prompts import Conditioning
from ..diffusion.sampling import alpha_pair, ddpm_step
from ..errors import InputError
from ..io import ImageLike, load_mask
from ..loading import DEFAULT_SD1_MODEL
from .attention import APP, OUT, STRUCT, CrossImageAttentionHook, SegmentationCapture
from .schedule import GUIDANCE_SCHEDULES, TransferSchedule
from .segmentation import masks_from_capture, resize_mask

ADAIN_MODES = ("masked", "full", "off")


@dataclass
class CrossImageAttentionOutput:
    images: Any  # the transfers, as ``output_type`` asks (one per structure/appearance pair)
    appearance_reconstructions: Any = per_image()  # the appearance row of the same run, same type
    structure_reconstructions: Any = per_image()  # the structure row, same type
    masks: dict[str, torch.Tensor] | None  # {"structure", "appearance"}: the AdaIN masks on the latent grid
    inversions: dict[str, Inversion]  # {"structure", "appearance"}: reusable for later calls
    activity: list[dict] | None = None  # per iteration: what was active (return_activity=True)
    unet_rows: int = 0  # UNet row-evaluations spent in the denoising loop

    @property
    def transfer(self):
        return self.images[0]

    @property
    def appearance_reconstruction(self):
        return self.appearance_reconstructions[0]

    @property
    def structure_reconstruction(self):
        return self.structure_reconstructions[0]


class CrossImageAttentionPipeline(StyleforgePipeline):
    default_model = DEFAULT_SD1_MODEL
    supported_families = (SD1, SDXL)
    #: rows [OUT, APP, STRUCT] of the denoising loop, offered to ``callback_on_step_end``
    _callback_tensor_inputs = ["latents"]

    @torch.no_grad()
    def __call__(
        self,
        structure_image: ImageLike,
        appearance_image: ImageLike,
        domain: str | None = None,
        *,
        prompt: str | None = None,
        object_noun: str | None = None,
        num_inference_steps: int = 100,
        skip_steps: int = 32,
        swap_range_full: tuple[int, int] = (10, 90),
        swap_range_half: tuple[int, int] = (10, 70),
        adain: str = "masked",
        adain_range: tuple[int, int] = (20, 100),
        mask_fallback: str | None = "full",
        contrast_strength: float = 1.67,
        contrast_clip: bool = True,
        swap_guidance_scale: float = 3.5,
        swap_guidance_schedule: str = "linear_to_half",
        guidance_range: tuple[int, int] | None = None,
        structure_injection: bool = True,
        structure_injection_period: int = 5,
        structure_injection_limit: int = 40,
        step_index_lag: int = 1,
        freeu: str = "cia_backbone",
        freeu_config: FreeUConfig = FreeUConfig(),
        inversion_guidance_scale: float = 3.5,
        exact_reconstruction: bool = False,
        structure_mask: ImageLike | torch.Tensor | None = None,
        appearance_mask: ImageLike | torch.Tensor | None = None,
        num_segments: int = 5,
        segmentation_seed: int = 1,
        structure_inversion: Inversion | None = None,
        appearance_inversion: Inversion | None = None,
        inversion_cache=None,
        generator: torch.Generator | None = None,
        seed: int | None = 42,
        size: int | None = None,
        guidance_rows: str = "output",
        attention_chunk_size: int | None = None,
        output_type: str = "pil",
        return_activity: bool = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> CrossImageAttentionOutput:
        """Transfer the appearance of ``appearance_image`` onto the structure of ``structure_image``.

        Defaults replicate the official code. Paper-literal switches: ``swap_guidance_schedule="constant"``,
        ``step_index_lag=0``, separate ``swap_range_full``/``swap_range_half``. ``swap_range_full`` is the
        code's ``cross_attn_64_range`` (layers at the latent's own resolution on SD 1.x), ``swap_range_half`` its
        ``cross_attn_32_range``; ranges count post-skip iterations. ``guidance_rows="output"`` runs the plain pass
        for the OUT row only (exact, 4 instead of 6 UNet rows per guided step); ``"all"`` is the naive schedule.
        ``attention_chunk_size`` computes the swapped maps in query chunks (default: the pipeline's memory savers,
        see :meth:`enable_memory_savers`). Lists (or batched tensors) of images run one transfer per pair.
        ``callback_on_step_end`` receives ``latents`` (rows [OUT, APP, STRUCT]) after each iteration and may return
        replacements.

        Randomness as in the official code: the inversions' noise maps come from ``generator``, or from one seeded
        with ``seed`` on the GPU when the UNet is on one (the official code draws from the global CUDA generator)
        and on the CPU otherwise; the appearance draws first, each inversion one latent-shaped map per step, least
        noisy first. The self-segmentation's k-means draws from ``np.random.RandomState(segmentation_seed)``
        (appearance fit, then structure fit). An empty mask falls back to full AdaIN (``mask_fallback="full"``);
        ``mask_fallback=None`` keeps the official NaN (a black image).
        """
        if is_batch(structure_image) or is_batch(appearance_image):
            return call_per_item(self, locals(), ("structure_image", "appearance_image"))
        from .. import validation as V

        V.check_all(num_inference_steps=(num_inference_steps, V.steps), skip_steps=(skip_steps, V.non_negative_int),
                    swap_range_full=(swap_range_full, V.int_pair), swap_range_half=(swap_range_half, V.int_pair),
                    adain_range=(adain_range, V.int_pair), guidance_range=(guidance_range, V.int_pair),
                    contrast_strength=(contrast_strength, V.positive), swap_guidance_scale=(swap_guidance_scale, V.finite),
                    structure_injection_period=(structure_injection_period, V.count),
                    structure_injection_limit=(structure_injection_limit, V.non_negative_int),
                    inversion_guidance_scale=(inversion_guidance_scale, V.finite), num_segments=(num_segments, V.count),
                    size=(size, V.optional_size), attention_chunk_size=(attention_chunk_size, V.optional_count))
        for name, value in vars(freeu_config).items():
            V.finite.check(value, f"freeu_config.{name}")
        check_output_type(output_type)
        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs)
        prompt, object_noun = self._prompt_and_noun(domain, prompt, object_noun, adain, structure_mask, appearance_mask)
        K, S = num_inference_steps, skip_steps
        if not 0 <= S < K:
            raise InputError(f"skip_steps must be in [0, {K - 1}], got {S}")
        if adain not in ADAIN_MODES:
            raise InputError(f"adain must be one of {ADAIN_MODES}, got {adain!r}")
        if swap_guidance_schedule not in GUIDANCE_SCHEDULES:
            raise InputError(f"swap_guidance_schedule must be one of {GUIDANCE_SCHEDULES}")
        if guidance_rows not in ("output", "all"):
            raise InputError("guidance_rows must be 'output' or 'all'")
        device = self._execution_device

        # self-segmentation clusters square attention grids: without both masks the structure is cropped square
        self_segments = adain == "masked" and (structure_mask is None or appearance_mask is None)
        struct_px = self.preprocess(structure_image, size, name="structure image", crop=self_segments,
                                    why=" (self-segmentation needs a square: give both masks, or adain full/off, to keep it)")
        app_px = self.preprocess(appearance_image, (struct_px.shape[-1], struct_px.shape[-2]), name="appearance image",
                                 why=" (the structure image's working size)")
        h, w = (s // self.vae_scale_factor for s in struct_px.shape[-2:])
        if app_px.shape != struct_px.shape:
            raise InputError("structure and appearance images must be processed at the same size")

        cond = self.encode_prompt(prompt, height=struct_px.shape[-2], width=struct_px.shape[-1])
        uncond = self.encode_prompt("", negative=True, height=struct_px.shape[-2], width=struct_px.shape[-1])
        freeu_handle = apply_freeu(self.unet, freeu, freeu_config)
        try:
            # 1. inversions (APP first, then STRUCT: the official order of draws from one generator)
            use_cache = inversion_cache is not None and generator is None and seed is not None
            # on the GPU when there is one, as the official code's draws (torch.randn_like)
            generator = generator_for(generator, seed, device="cuda" if device.type == "cuda" else "cpu")
            inv_settings = dict(prompt=prompt, negative_prompt="", guidance_scale=float(inversion_guidance_scale),
                                model_id=self.model_id, family=self.family,
                                weights=self.weights_fingerprint if use_cache else "",  # hashing is only for the cache
                                extra={"freeu": freeu, "freeu_config": dataclasses.asdict(freeu_config),
                                       "dtype": str(self.unet.dtype), "zero_last_noise": True,
                                       "noise_draws": NOISE_DRAWS, "rng_device": generator.device.type})
            inversion_eps = self._eps_fn(cond, uncond, inversion_guidance_scale)
            inversions = {}
            for role, pixels, given, position in (("appearance", app_px, appearance_inversion, 0),
                                                   ("structure", struct_px, structure_inversion, 1)):
                inversions[role] = self._invert(role, pixels, given, position, K, inversion_eps, generator,
                                                inversion_cache if use_cache else None, seed, inv_settings)

            # 2. three latent paths: OUT and STRUCT start at the structure's latent and share its noise maps
            xs_s, ts, zs_s = inversions["structure"].start(S)
            xs_a, _, zs_a = inversions["appearance"].start(S)
            latents = torch.stack([xs_s, xs_a, xs_s]).to(device, torch.float32)
            noise = torch.stack([zs_s, zs_a, zs_s], dim=1).to(device, torch.float32)  # (N, 3, C, h, w)

            # 3. attention hooks at the two finest decoder self-attention resolutions
            if attention_chunk_size is None:
                attention_chunk_size = self.memory_savers.attention_chunk_size
            controller = AttentionController(self.unet, chunk_size=attention_chunk_size)
            factors = finest_factors(controller.layers, "up", "self", 2)
            if len(factors) < 2:
                raise InputError("this UNet has fewer than two decoder self-attention resolutions")
            schedule = TransferSchedule(
                num_iterations=K - S, swap_ranges={factors[0]: tuple(swap_range_full), factors[1]: tuple(swap_range_half)},
                guidance_range=tuple(guidance_range or (swap_range_full[0], swap_range_full[1])),
                guidance_scale=swap_guidance_scale, guidance_schedule=swap_guidance_schedule,
                adain_range=tuple(adain_range), structure_injection=structure_injection,
                injection_period=structure_injection_period, injection_limit=structure_injection_limit,
                step_index_lag=step_index_lag)
            swap_hook = CrossImageAttentionHook(factors, contrast_strength, contrast_clip, attention_chunk_size)
            masks = self._user_masks(structure_mask, appearance_mask, (h, w)) if adain == "masked" else None
            capture = None
            if adain == "masked" and (masks["structure"] is None or masks["appearance"] is None):
                capture = SegmentationCapture(self_factor=factors[0], cross_factor=factors[1])
            token_span = self.prompt_encoder.token_span(prompt, object_noun) if capture else []

            eps_fn = self._eps_fn(cond, uncond, inversion_guidance_scale if exact_reconstruction else 1.0)
            activity = [] if return_activity else None
            rows = 0
            with controller:
                controller.add(swap_hook)
                if capture is not None:
                    controller.add(capture)
                for i in self.progress_bar(range(K - S)):
                    t = ts[i]
                    plan = schedule.activity(i)
                    controller.state.update(swap_factors=plan["swap"], inject=plan["inject"],
                                            capture=capture is not None and plan["capture"])
                    eps = eps_fn(latents, t)
                    rows += eps_fn.rows(3)
                    alpha = plan["guidance"]
                    if alpha is not None and plan["swap"]:  # eps_cross == eps_self when nothing swaps: skip the pass
                        controller.state.update(swap_factors=(), capture=False)
                        if guidance_rows == "output":  # the plain pass only matters for OUT (APP/STRUCT rows agree)
                            eps_self = eps_fn(latents[OUT:OUT + 1], t)
                            rows += eps_fn.rows(1)
                            eps[OUT] = eps_self[0] + alpha * (eps[OUT] - eps_self[0])
                        else:
                            eps_self = eps_fn(latents, t)
                            rows += eps_fn.rows(3)
                            eps = eps_self + alpha * (eps - eps_self)
                    else:
                        plan["guidance"] = None
                    a_t, a_prev = alpha_pair(self.ddim_scheduler, t, K)
                    latents = ddpm_step(latents, eps, a_t.to(device), a_prev.to(device), noise[i])
                    if capture is not None and schedule.masks_ready(i):
                        masks = self._segment(capture, token_span, masks, num_segments, segmentation_seed, (h, w))
                    if adain != "off" and schedule.adain(i):
                        latents[OUT] = self._adain(latents, masks, mask_fallback)[0]
                    if activity is not None:
                        activity.append(dict(plan, i=i, t=int(t)))
                    if step_end:
                        latents = step_end(i, t, latents=latents).pop("latents", latents)
        finally:
            if freeu_handle is not None:
                freeu_handle.disable()

        if not torch.isfinite(latents).all():
            raise InputError("the transfer produced NaN values (an empty AdaIN mask with mask_fallback=None, or fp16 "
                             "overflow: try dtype fp32 or bf16)")
        rows_out = latents if output_type == "latent" else self.decode_latents(latents.to(self.unet.dtype))
        out, app, struct = (rows_out[r:r + 1] if output_type == "latent" else postprocess(rows_out[r:r + 1], output_type)
                            for r in (OUT, APP, STRUCT))
        self.maybe_free_model_hooks()  # with model offload: every model back off the accelerator (diffusers' convention)
        return CrossImageAttentionOutput(out, app, struct, masks, inversions, activity, rows)

    # ------------------------------------------------------------------------------------------- pieces

    @staticmethod
    def _prompt_and_noun(domain, prompt, object_noun, adain, structure_mask, appearance_mask):
        if prompt is None:
            if not domain:
                raise InputError("give a domain (e.g. 'animal') or an explicit prompt")
            prompt = f"A photo of a {domain}"
        object_noun = object_noun or domain
        needs_noun = adain == "masked" and (structure_mask is None or appearance_mask is None)
        if needs_noun and not object_noun:
            raise InputError("masked AdaIN needs an object noun (or a domain), or both masks")
        return prompt, object_noun

    def _eps_fn(self, cond: Conditioning, uncond: Conditioning, guidance_scale: float):
        """eps(x, t) in float32 for rows sharing one prompt; classifier-free guided when guidance_scale != 1."""
        unet, dtype = self.unet, self.unet.dtype
        use_cfg = guidance_scale != 1.0

        def eps(x, t):
            b = x.shape[0]
            if not use_cfg:
                return unet(x.to(dtype), t, **cond.repeat(b).unet_kwargs()).sample.float()
            both = Conditioning.cat([uncond.repeat(b), cond.repeat(b)])
            e_u, e_c = unet(torch.cat([x, x]).to(dtype), t, **both.unet_kwargs()).sample.float().chunk(2)
            return e_u + guidance_scale * (e_c - e_u)

        eps.rows = lambda n: n * (2 if use_cfg else 1)  # UNet rows spent on n latent rows
        return eps

    def _invert(self, role, pixels, given, position, K, eps_fn, generator, cache, seed, settings) -> Inversion:
        shape = (4, pixels.shape[-2] // self.vae_scale_factor, pixels.shape[-1] // self.vae_scale_factor)
        if given is not None:
            if given.family and given.family != self.family:
                raise InputError(f"the {role} inversion was made with an {given.family.upper()} model; this model is "
                                 f"{self.family.upper()} (invert the image again with this model)")
            if given.kind != EDIT_FRIENDLY or given.noise is None or len(given.timesteps) != K:
                raise InputError(f"the {role} inversion must be edit-friendly with {K} steps")
            if tuple(given.latents.shape[1:]) != (self.unet.config.in_channels,) + shape[1:]:
                raise InputError(f"the {role} inversion's latent shape does not match the working size")
            if position == 0:  # keep the structure's draws where they would be without a given appearance inversion
                draw_noise_maps(K, (1,) + shape, generator)
            return given
        fields = dict(settings, image_hash=image_hash(pixels), seed=seed, extra=dict(settings["extra"], rng_position=position))
        if cache is not None:
            hit = cache.get(kind=EDIT_FRIENDLY, num_inference_steps=K, eta=1.0, **fields)
            if hit is not None:
                draw_noise_maps(K, (1,) + shape, generator)  # consume its draws
                return hit
        x0 = self.encode_images(pixels).float()
        inv = edit_friendly_invert(eps_fn, x0, self.ddim_scheduler, K, generator=generator, progress=self.progress_bar,
                                   **fields)
        if cache is not None:
            cache.put(inv)
        return inv

    def _user_masks(self, structure_mask, appearance_mask, hw) -> dict:
        load = lambda m, name: None if m is None else load_mask(m, size=hw, name=name).to(self._execution_device)  # noqa: E731
        return {"structure": load(structure_mask, "structure mask"), "appearance": load(appearance_mask, "appearance mask")}

    def _segment(self, capture, token_span, masks, num_segments, seed, hw) -> dict:
        if not token_span:
            warnings.warn("the object noun was not found in the prompt; self-segmentation gives empty masks", stacklevel=3)
            empty = torch.zeros(1, 1, *hw, device=self._execution_device)
            return {"structure": masks["structure"] if masks["structure"] is not None else empty,
                    "appearance": masks["appearance"] if masks["appearance"] is not None else empty}
        app_mask, struct_mask = masks_from_capture(capture, token_span, num_segments=num_segments, seed=seed)
        return {"structure": masks["structure"] if masks["structure"] is not None else resize_mask(struct_mask, hw).to(self._execution_device),
                "appearance": masks["appearance"] if masks["appearance"] is not None else resize_mask(app_mask, hw).to(self._execution_device)}

    @staticmethod
    def _adain(latents, masks, fallback) -> torch.Tensor:
        out, app = latents[OUT:OUT + 1], latents[APP:APP + 1]
        if masks is None:
            return adain_fn(out, app)
        return masked_adain(out, app, masks["structure"], masks["appearance"], fallback=fallback)

    def metadata_for(self, **params: Any) -> dict:
        return self.metadata("cross-image-attention", **params)
