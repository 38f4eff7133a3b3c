"""pix2pix-zeroCon (Si et al., arXiv 2503.20484): pix2pix-zero with a patch-wise contrastive guidance term.

The edit, as in the paper's Algorithm 1 (spec §3):

1. caption the image (BLIP, Eq. 11) and encode it: c = E(P);
2. DDIM-invert its latent to x_T under c (Eq. 9-10), regularising every predicted noise map (pix2pix-zero);
3. build the edit direction delta_c from sentence banks (Eq. 12, target minus source); c_hat = c + w delta_c;
4. denoise twice from x_T: the reference trajectory with c, recording cross-attention maps M_t and patch features
   h_t; the edited trajectory with c_hat, where at every step the latent takes one gradient step on
   L_t = lambda_c L_c + lambda_e L_e (Eq. 14-17) with rate lambda (Eq. 18) before its DDIM update.

With lambda_e = 0 this is pix2pix-zero. Two guidance modes (spec §3.6): ``"p2pzero_code"`` (default; the official
code: the latent is duplicated for the two CFG branches, both copies are guided, the negative-prompt copy is
stepped) and ``"paper"`` (Algorithm 1 literally: one latent, guided by the conditional branch).

Scales, so that lambda values can be compared with the paper and between modes:

* L_e (Eq. 15) is a *sum* over layers l and the S patches s in the paper; here it is summed over the layers and the
  patch sizes but *averaged* over the S patches of each (layer, patch size) and over the batch items, i.e. over the
  two CFG copies in ``"p2pzero_code"`` mode. One unit of ``lambda_cut`` is therefore a paper lambda_e of 1/S (1/(2S)
  per copy in ``"p2pzero_code"`` mode; S = ``cut_num_patches``, 256).
* L_c is averaged over (batch items x heads) as in the official code, so it too is a mean over the two copies.
* Hence the step size differs 2x between the modes: with CFG, ``"p2pzero_code"`` moves the stepped copy by
  ``guidance_lr / 2`` times the gradient of its own branch's loss, ``"paper"`` by ``guidance_lr`` times the gradient
  of its single branch. Without CFG (``cfg_scale <= 1``) both modes use one branch and the same step.
* L_e's features (spec §3.7): the output of every self-attention sub-layer (``attn1``, after its output
  projection) of the UNet's encoder blocks by default (``cut_layers``; SD 1.5: 2 layers at 64x64, 2 at 32x32, 2 at
  16x16), both CFG halves in ``"p2pzero_code"`` mode and the conditional half in ``"paper"`` mode, each compared with
  the same half of the reference (reconstruction) trajectory at the same timestep; raw and 2x2-average-pooled
  (``cut_patch_sizes``), L2-normalised over channels, ``cut_num_patches`` random positions per layer and size shared
  by query and keys, temperature ``cut_tau``, no projection head, the reference side detached.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from ..diffusion.attention import AttentionController
from ..diffusion.convention import (StepEnd, call_per_item, check_output_type, generator_for, is_batch, per_image,
                                    postprocess)
from ..diffusion.inversion import ddim_invert
from ..diffusion.memory import gradient_checkpointing
from ..diffusion.pipeline import SD1, StyleforgePipeline
from ..diffusion.prompts import Conditioning
from ..diffusion.sampling import alpha_pair, ddim_step, noise_predictor, step_ratio, timesteps_for
from ..errors import InputError
from ..io import ImageLike, atomic_write, load_image
from ..loading import DEFAULT_SD1_MODEL
from .captioning import Captioner, resolve_caption
from .directions import (EditDirection, EmbeddingCache, SentenceSource, apply_direction, as_sentences,
                         direction_from_embeddings, direction_from_sentences, load_embedding, resolve_sentence_source,
                         warn_if_few, DEFAULT_NUM_SENTENCES)
from .guidance import CUT_LAYER_SETS, GuidanceProbe, ReferenceStep
from .losses import PatchNCESettings, RegularizerSettings, regularize_noise

GUIDANCE_MODES = ("p2pzero_code", "paper")
#: the official code's grid (default) or the exact inverse of the sampler's grid
INVERSION_GRIDS = ("p2pzero", "symmetric")
REFERENCE_MODES = ("interleaved", "stored")


@dataclass
class Pix2PixZeroConOutput:
    images: Any  # edited images as ``output_type`` asks: PIL list, (B, H, W, 3) array, (B, 3, H, W) tensor or latents
    reconstruction: Any = per_image()  # the reference trajectory's result, same type
    caption: str  # the caption P the image was inverted and reconstructed with
    inverted_latent: torch.Tensor  # x_T, (1, 4, h, w)
    edit_direction: EditDirection  # delta_c, (1, 77, D)
    edited_latent: torch.Tensor  # the edited x_0 latent
    log: list[dict] | None = None  # per step: losses, gradient norms, reference entries still held
    params: dict = field(default_factory=dict)  # every setting, for metadata


class Pix2PixZeroConPipeline(StyleforgePipeline):
    """Text-guided image-to-image translation with cross-attention and patch-wise contrastive guidance."""

    default_model = DEFAULT_SD1_MODEL
    supported_families = (SD1,)
    #: offered to ``callback_on_step_end`` after every edit step (both may be replaced)
    _callback_tensor_inputs = ["latents", "reference_latents"]

    # ------------------------------------------------------------------------------------------- public API

    @torch.no_grad()
    def __call__(
        self,
        image: ImageLike,
        *,
        # the edit: words, prompts, a ready direction, two mean embeddings, or two sentence banks
        source: str | None = None,
        target: str | None = None,
        source_prompt: str | None = None,
        target_prompt: str | None = None,
        direction: EditDirection | torch.Tensor | str | os.PathLike | None = None,
        source_embedding: torch.Tensor | str | os.PathLike | None = None,
        target_embedding: torch.Tensor | str | os.PathLike | None = None,
        source_sentences: Sequence[str] | str | os.PathLike | None = None,
        target_sentences: Sequence[str] | str | os.PathLike | None = None,
        sentence_source: str | SentenceSource | None = None,
        num_sentences: int = DEFAULT_NUM_SENTENCES,
        direction_cache: EmbeddingCache | bool | None = None,
        edit_multiplier: float = 1.0,
        # the caption
        caption: str | None = None,
        captioner: Captioner | str | None = "auto",
        # sampling and guidance
        num_inference_steps: int = 50,
        guidance_lr: float = 0.1,
        lambda_xa: float = 1.0,
        lambda_cut: float = 1.0,
        cfg_scale: float = 5.0,
        negative_prompt: str | None = None,
        guidance_mode: str = "p2pzero_code",
        update_latent_before_step: bool = True,
        guided_step_range: tuple[float, float] = (0.0, 1.0),
        cut_layers: str = "down_attn1",
        cut_num_patches: int = 256,
        cut_patch_sizes: Sequence[int] = (1, 2),
        cut_tau: float = 0.07,
        # inversion
        inversion_grid: str = "p2pzero",
        reg_lambda_ac: float = 20.0,
        reg_lambda_kl: float = 20.0,
        reg_steps: int = 5,
        reg_rolls: int = 5,
        vae_sample: bool = False,
        inverted_latent: torch.Tensor | None = None,
        # runtime
        size: int | tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        reference_mode: str = "interleaved",
        offload_reference: bool = False,
        gradient_checkpointing: bool | None = None,
        return_log: bool = False,
        callback: Callable[[int, int, dict], None] | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> Pix2PixZeroConOutput:
        """Edit ``image``. See the module docstring for the algorithm and spec §3.8 for the defaults.

        ``negative_prompt=None`` uses the caption (pix2pix-zero's real-image mode; the reference pass's CFG then
        collapses to the conditional noise). ``guidance_lr`` is lambda of Eq. 18, ``lambda_xa``/``lambda_cut`` are
        lambda_c/lambda_e of Eq. 17 with the scales of the module docstring (L_e a mean over patches and CFG copies,
        not Eq. 15's sum; half the step per copy in ``"p2pzero_code"`` mode); ``lambda_cut=0`` is pix2pix-zero.
        The defaults are the official code's (inversion grid ``"p2pzero"``, LANCZOS resize, per-channel roll offsets)
        except ``vae_sample=False``: the posterior mode, deterministic, where the official code samples (unseeded). ``reference_mode="interleaved"`` runs each
        reference step just before the guided step that needs it (one step of maps in memory);
        ``"stored"`` runs the whole reference pass first (optionally keeping its records on the CPU with
        ``offload_reference``); both give identical results. ``gradient_checkpointing`` recomputes the UNet's
        activations in the guided steps' backward (same result, less memory; default: the pipeline's memory
        savers). ``inverted_latent`` reuses an x_T from an earlier call
        (``output.inverted_latent``, same caption and steps). ``callback_on_step_end(pipe, step, t, kwargs)`` is
        called after every edit step with the requested ``latents`` (the edited latent) and ``reference_latents``,
        and may return replacements. The deprecated ``callback(step, t, info)`` gets the log entry plus ``latent``,
        ``reference_latent``, ``guided_copies`` (the latent copies after the gradient step, None when unguided) and
        ``stepped_from`` (what the DDIM step started from). Randomness (VAE sampling, roll offsets, patch ids) comes
        from ``generator`` or ``seed``. A list of images (or a batched tensor) edits each in turn.
        """
        if is_batch(image):
            return call_per_item(self, locals(), ("image",))
        check_output_type(output_type)
        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs, callback, _legacy_callback)
        _check_choice("guidance_mode", guidance_mode, GUIDANCE_MODES)
        _check_choice("inversion_grid", inversion_grid, INVERSION_GRIDS)
        _check_choice("reference_mode", reference_mode, REFERENCE_MODES)
        _check_choice("cut_layers", cut_layers, tuple(CUT_LAYER_SETS))
        from .. import validation as V

        V.check_all(num_inference_steps=(num_inference_steps, V.steps), edit_multiplier=(edit_multiplier, V.finite),
                    cfg_scale=(cfg_scale, V.finite), guided_step_range=(guided_step_range, V.fraction_pair),
                    cut_num_patches=(cut_num_patches, V.count), cut_tau=(cut_tau, V.positive),
                    reg_steps=(reg_steps, V.non_negative_int), reg_rolls=(reg_rolls, V.non_negative_int),
                    num_sentences=(num_sentences, V.count), guidance_lr=(guidance_lr, V.non_negative),
                    lambda_xa=(lambda_xa, V.non_negative), lambda_cut=(lambda_cut, V.non_negative),
                    reg_lambda_ac=(reg_lambda_ac, V.non_negative), reg_lambda_kl=(reg_lambda_kl, V.non_negative))
        for p in cut_patch_sizes:
            V.count.check(p, "cut_patch_sizes")
        start, end = guided_step_range  # ordered fractions: checked by V.fraction_pair above
        nce = PatchNCESettings(int(cut_num_patches), tuple(int(p) for p in cut_patch_sizes), float(cut_tau))
        reg = RegularizerSettings(float(reg_lambda_ac), float(reg_lambda_kl), int(reg_steps), int(reg_rolls))
        generator = generator_for(generator, seed)
        # two CPU streams seeded from the caller's generator: the regulariser's roll offsets and the patch ids; a
        # reused inversion then leaves the patch ids (and so the edit) exactly as a fresh one would
        inversion_seed, patch_seed = torch.randint(0, 2 ** 62, (2,), generator=generator, device=generator.device).tolist()
        inversion_generator = torch.Generator("cpu").manual_seed(inversion_seed)
        patch_generator = torch.Generator("cpu").manual_seed(patch_seed)

        # 1. image and caption (Eq. 11)
        pil = load_image(image)
        pixels = self.preprocess(pil, self.working_size(pil.size, size), resample=Image.LANCZOS)  # as the official CLI
        if caption is None and source_prompt is not None:
            caption = source_prompt  # a prompt edit describes the input with its source prompt
        caption = resolve_caption(pil, caption, captioner, device=self._execution_device)
        cond = self.encode_prompt(caption)

        # 2. edit direction (Eq. 12) and the edited embedding c_hat = c + w delta_c, on the conditional branch only
        delta = self.build_direction(source=source, target=target, source_prompt=source_prompt,
                                     target_prompt=target_prompt, direction=direction,
                                     source_embedding=source_embedding, target_embedding=target_embedding,
                                     source_sentences=source_sentences, target_sentences=target_sentences,
                                     sentence_source=sentence_source, num_sentences=num_sentences, cache=direction_cache)
        edited = Conditioning(apply_direction(cond.embeds, delta, edit_multiplier))
        negative = cond if negative_prompt is None else self.encode_prompt(negative_prompt, negative=True)

        # 3. inversion (Eq. 9-10 with pix2pix-zero's noise regulariser)
        if inverted_latent is None:
            if inversion_grid == "p2pzero" and num_inference_steps < 3:
                warnings.warn("the p2pzero inversion grid (the default) drops the first and last of the N steps, so "
                              f"with {num_inference_steps} steps it inverts nothing (x_T = x_0, as the official code); "
                              "use inversion_grid='symmetric' (--inversion-grid symmetric) for short runs", stacklevel=3)
            x0 = self.encode_images(pixels, generator=generator, sample=vae_sample)
            x_T = self.invert(x0, cond, num_inference_steps, grid=inversion_grid, regularizer=reg,
                              generator=inversion_generator)
        else:
            x_T = self._check_latent(inverted_latent, pixels)
        # one memory layout whatever produced x_T: conv kernels round differently on channels-last tensors
        x_T = x_T.contiguous()

        # 4. reference and guided edit passes (Alg. 1)
        sampler = _EditSampler(self, cond=cond, edited=edited, negative=negative, cfg_scale=float(cfg_scale),
                               guidance_lr=float(guidance_lr), lambda_xa=float(lambda_xa),
                               lambda_cut=float(lambda_cut), mode=guidance_mode,
                               update_latent_before_step=update_latent_before_step, step_range=(start, end),
                               cut_layers=cut_layers, nce=nce, generator=patch_generator, log=return_log,
                               step_end=step_end, store_device="cpu" if offload_reference else None,
                               gradient_checkpointing=self.memory_savers.gradient_checkpointing
                               if gradient_checkpointing is None else bool(gradient_checkpointing))
        edited_latent, reference_latent, log = sampler.run(x_T, num_inference_steps, reference_mode)

        params = dict(caption=caption, edit=delta.info(), edit_multiplier=edit_multiplier,
                      num_inference_steps=num_inference_steps, guidance_lr=guidance_lr, lambda_xa=lambda_xa,
                      lambda_cut=lambda_cut, cfg_scale=cfg_scale, negative_prompt=negative_prompt,
                      guidance_mode=guidance_mode, update_latent_before_step=update_latent_before_step,
                      guided_step_range=[start, end], cut_layers=cut_layers, cut_num_patches=nce.num_patches,
                      cut_patch_sizes=list(nce.patch_sizes), cut_tau=nce.tau, inversion_grid=inversion_grid,
                      reg_lambda_ac=reg.lambda_ac, reg_lambda_kl=reg.lambda_kl, reg_steps=reg.steps,
                      reg_rolls=reg.rolls, vae_sample=vae_sample, seed=seed,
                      size=list(pixels.shape[-2:][::-1]), reference_mode=reference_mode)
        edited, reference = self._output(edited_latent, output_type), self._output(reference_latent, output_type)
        self.maybe_free_model_hooks()  # with model offload: every model back off the accelerator (diffusers' convention)
        return Pix2PixZeroConOutput(edited, reference, caption, x_T.detach().cpu(), delta, edited_latent.detach().cpu(),
                                    log, params)

    # ------------------------------------------------------------------------------------------- directions

    def encode_sentences(self, sentences: list[str]) -> torch.Tensor:
        """E(sentences): the text encoder's last hidden state, (B, 77, D)."""
        return self.prompt_encoder(sentences).embeds

    def build_direction(self, *, source=None, target=None, source_prompt=None, target_prompt=None, direction=None,
                        source_embedding=None, target_embedding=None, source_sentences=None, target_sentences=None,
                        sentence_source: str | SentenceSource | None = None, num_sentences: int = DEFAULT_NUM_SENTENCES,
                        cache: EmbeddingCache | bool | None = None) -> EditDirection:
        """delta_c from exactly one kind of edit (spec §3.4); sentence banks override the generator's sentences."""
        given = {"words": source is not None or target is not None,
                 "prompts": source_prompt is not None or target_prompt is not None,
                 "direction": direction is not None,
                 "embeddings": source_embedding is not None or target_embedding is not None}
        kinds = [k for k, v in given.items() if v]
        if len(kinds) > 1:
            raise InputError(f"give one edit, not several: got {' and '.join(kinds)}")
        banks = source_sentences is not None or target_sentences is not None
        if (given["direction"] or given["embeddings"]) and banks:
            raise InputError("sentence lists build a direction; they cannot be combined with a ready direction or embeddings")
        width = self.text_encoder.config.hidden_size

        if given["direction"]:
            d = direction if isinstance(direction, EditDirection) else (
                EditDirection(direction, source="tensor") if isinstance(direction, torch.Tensor) else EditDirection.load(direction))
            return _check_width(d, width)
        if given["embeddings"]:
            if source_embedding is None or target_embedding is None:
                raise InputError("an embedding edit needs both a source and a target embedding")
            src = source_embedding if isinstance(source_embedding, torch.Tensor) else load_embedding(source_embedding, what="source embedding")
            tgt = target_embedding if isinstance(target_embedding, torch.Tensor) else load_embedding(target_embedding, what="target embedding")
            return _check_width(direction_from_embeddings(src, tgt, source=_describe(source_embedding),
                                                          target=_describe(target_embedding)), width)

        labels = (source, target) if given["words"] else (source_prompt, target_prompt)
        if banks:
            if source_sentences is None or target_sentences is None:
                raise InputError("a sentence-bank edit needs both a source and a target sentence list")
            src_s, tgt_s = as_sentences(source_sentences, "source"), as_sentences(target_sentences, "target")
            labels = (labels[0] or _describe(source_sentences), labels[1] or _describe(target_sentences))
        elif given["words"] or given["prompts"]:
            if labels[0] is None or labels[1] is None or not labels[0].strip() or not labels[1].strip():
                what = "source and target words" if given["words"] else "source and target prompts"
                raise InputError(f"a {'word' if given['words'] else 'prompt'} edit needs both {what}")
            make = resolve_sentence_source(sentence_source or ("template" if given["words"] else "single"))
            src_s, tgt_s = make(labels[0], num_sentences), make(labels[1], num_sentences)
        else:
            raise InputError("no edit given: pass source/target words (cat, dog), source/target prompts, "
                             "a direction, two mean embeddings, or two sentence lists")
        for sentences, what in ((src_s, "source"), (tgt_s, "target")):
            message = warn_if_few(sentences, what)
            if message:
                warnings.warn(message, stacklevel=2)
        if cache is None or cache is True:
            # components built in code would be hashed tensor by tensor on every call: not worth it for embeddings
            cache = EmbeddingCache() if self.model_id != "components" else None
        elif cache is False:
            cache = None
        d = direction_from_sentences(self.encode_sentences, src_s, tgt_s, model_id=self.model_id, cache=cache,
                                     source=labels[0] or "", target=labels[1] or "",
                                     cache_key=self.weights_fingerprint if cache is not None else None)
        return _check_width(d, width)

    # ------------------------------------------------------------------------------------------- inversion

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, cond: Conditioning, num_inference_steps: int, *, grid: str = "p2pzero",
               regularizer: RegularizerSettings = RegularizerSettings(),
               generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T by deterministic DDIM inversion without CFG, every noise prediction regularised (spec §3.2-3.3).

        ``"p2pzero"`` (default): the official code's grid (N - 2 UNet calls at t = k+1 .. (N-2)k+1, each moving from
        alpha-bar[t - 1] to alpha-bar[t - 1 + k], so the clean latent is treated as level k and x_T ends one training
        step below the sampler's first level); ``"symmetric"``: the shared inversion's grid (diffusers'
        ``DDIMInverseScheduler``), the exact inverse of the sampler's.
        """
        unet_eps = noise_predictor(self.unet, cond)

        def eps_fn(x, t):
            return regularize_noise(unet_eps(x, t), regularizer, generator=generator)

        if grid == "symmetric":
            inv = ddim_invert(eps_fn, x0, self.ddim_scheduler, num_inference_steps, progress=self.progress_bar)
            return inv.latents[:1]
        ratio = step_ratio(self.ddim_scheduler, num_inference_steps)
        alphas = self.ddim_scheduler.alphas_cumprod
        x = x0
        for t in self.progress_bar(timesteps_for(self.ddim_scheduler, num_inference_steps).flip(0)[1:-1]):
            # the official inverse scheduler reads alpha-bar at t - 1 and moves one grid step up
            a_from, a_to = alphas[int(t) - 1], alphas[int(t) - 1 + ratio]
            x = ddim_step(x, eps_fn(x, t), a_from.to(x.device), a_to.to(x.device))
        return x

    # ------------------------------------------------------------------------------------------- helpers

    working_side = "long"  # spec §8.21: the long side at the model's resolution

    def _check_latent(self, latent: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        expected = (1, self.unet.config.in_channels, pixels.shape[-2] // self.vae_scale_factor,
                    pixels.shape[-1] // self.vae_scale_factor)
        if tuple(latent.shape) != expected:
            raise InputError(f"the inverted latent has shape {tuple(latent.shape)}, expected {expected} for this image size")
        return latent.to(self._execution_device, self.unet.dtype)

    def _output(self, latents: torch.Tensor, output_type: str):
        return latents if output_type == "latent" else postprocess(self.decode_latents(latents), output_type)


def _legacy_callback(fn, step, t, tensors) -> None:
    """The deprecated ``callback(step, t, info)``: the log entry plus the step's tensors under their old names."""
    fn(step, int(t), dict(tensors["info"], latent=tensors["latents"], reference_latent=tensors["reference_latents"],
                          guided_copies=tensors["guided_copies"], stepped_from=tensors["stepped_from"]))


def save_inversion(path: str | os.PathLike, output: Pix2PixZeroConOutput) -> Path:
    """Write x_T with the caption and settings it was inverted with (safetensors, atomic), for editing it again."""
    from safetensors.torch import save_file

    keys = ("num_inference_steps", "inversion_grid", "reg_lambda_ac", "reg_lambda_kl", "reg_steps", "reg_rolls",
            "vae_sample", "seed", "size")
    info = {"caption": output.caption, **{k: output.params.get(k) for k in keys}}
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file({"inverted_latent": output.inverted_latent.contiguous().cpu()}, str(tmp),
                  metadata={"styleforge_pix2pix_inversion": json.dumps(info, default=str)})
    return path


def load_inversion(path: str | os.PathLike) -> tuple[torch.Tensor, dict]:
    """x_T and its settings from a file written by :func:`save_inversion`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"inversion file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {})["styleforge_pix2pix_inversion"])
            latent = f.get_tensor("inverted_latent")
    except Exception:
        raise InputError(f"not a pix2pix-zeroCon inversion file: {path} (write one with --save-inversion)") from None
    return latent, info


class _EditSampler:
    """The two denoising passes of Alg. 1: reference (records) and edit (guided), sharing one attention controller."""

    def __init__(self, pipe: Pix2PixZeroConPipeline, *, cond, edited, negative, cfg_scale, guidance_lr, lambda_xa,
                 lambda_cut, mode, update_latent_before_step, step_range, cut_layers, nce, generator, log, step_end,
                 store_device, gradient_checkpointing=False):
        self.pipe, self.unet, self.scheduler = pipe, pipe.unet, pipe.ddim_scheduler  # any SD scheduler config, sampled on the DDIM grid
        self.cond, self.edited, self.negative = cond, edited, negative
        self.cfg_scale, self.use_cfg = cfg_scale, cfg_scale > 1.0
        self.lr, self.lambda_xa, self.lambda_cut = guidance_lr, lambda_xa, lambda_cut
        self.mode, self.update_before = mode, update_latent_before_step
        self.step_range, self.cut_layers, self.nce = step_range, cut_layers, nce
        self.generator, self.want_log, self.step_end, self.store_device = generator, log, step_end, store_device
        self.checkpointing = gradient_checkpointing
        # no gradient at all when it would be multiplied by zero (spec §3.9: avoids 0 * NaN and the work)
        self.guiding = guidance_lr > 0 and (lambda_xa > 0 or lambda_cut > 0)

    # ------------------------------------------------------------------------------------------- noise

    def _unet(self, x: torch.Tensor, t, embeds: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=embeds).sample

    def _cfg_eps(self, x_uncond: torch.Tensor, x_cond: torch.Tensor, t, cond: Conditioning) -> torch.Tensor:
        """eps_u + s (eps_c - eps_u) in one batched call, each branch at its own latent (or eps_c without CFG)."""
        if not self.use_cfg:
            return self._unet(x_cond, t, cond.embeds)
        e_u, e_c = self._unet(torch.cat([x_uncond, x_cond]), t, torch.cat([self.negative.embeds, cond.embeds])).chunk(2)
        return e_u + self.cfg_scale * (e_c - e_u)

    # ------------------------------------------------------------------------------------------- passes

    def run(self, x_T: torch.Tensor, num_inference_steps: int, reference_mode: str):
        timesteps = timesteps_for(self.scheduler, num_inference_steps)
        n = len(timesteps)
        first, last = (round(f * n) for f in self.step_range)
        guided = [self.guiding and first <= i < last for i in range(n)]
        controller = AttentionController(self.unet)
        probe = None
        if any(guided):
            latent_hw = tuple(x_T.shape[-2:])
            probe = GuidanceProbe(controller, record_maps=self.lambda_xa > 0,
                                  cut_layers=self.cut_layers if self.lambda_cut > 0 else None, nce=self.nce,
                                  latent_hw=latent_hw, generator=self.generator, store_device=self.store_device)
            probe.keep_reference = self.checkpointing
        log = [] if self.want_log else None
        x_ref, x_edit = x_T, x_T
        # gradients flow to the latent only: frozen weights keep autograd from saving what their gradients would need
        trainable = [p for p in self.unet.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            with controller:
                pending: dict[int, ReferenceStep] = {}
                if reference_mode == "stored":  # the whole reference pass first (Alg. 1 lines 2-7)
                    for i, t in enumerate(self.pipe.progress_bar(timesteps)):
                        x_ref = self._reference_step(x_ref, t, num_inference_steps, probe if guided[i] else None, pending, i)
                for i, t in enumerate(self.pipe.progress_bar(timesteps)):
                    if reference_mode == "interleaved":
                        x_ref = self._reference_step(x_ref, t, num_inference_steps, probe if guided[i] else None, pending, i)
                    reference = pending.pop(i, None)
                    x_edit, entry, tensors = self._edit_step(x_edit, t, num_inference_steps,
                                                             probe if guided[i] else None, reference)
                    del reference  # this step's maps and patches are no longer needed
                    entry.update(step=i, t=int(t), reference_steps_held=len(pending))
                    if log is not None:
                        log.append(entry)
                    if self.step_end:
                        changed = self.step_end(i, t, latents=x_edit, reference_latents=x_ref, info=entry, **tensors)
                        x_edit = changed.pop("latents", x_edit)
                        x_ref = changed.pop("reference_latents", x_ref)
        finally:
            if probe is not None:
                probe.close()
            for p in trainable:
                p.requires_grad_(True)
        return x_edit, x_ref, log

    @torch.no_grad()
    def _reference_step(self, x, t, num_inference_steps, probe, pending, i):
        """Denoise the reference latent one step with c, recording this step's maps and patches when guided."""
        if probe is not None:
            pending[i] = ReferenceStep()
            probe.record(pending[i])
        eps = self._cfg_eps(x, x, t, self.cond)
        if probe is not None:
            probe.off()
        a_t, a_prev = alpha_pair(self.scheduler, t, num_inference_steps)
        return ddim_step(x, eps, a_t.to(x.device), a_prev.to(x.device))

    def _edit_step(self, x, t, num_inference_steps, probe, reference):
        a_t, a_prev = (a.to(x.device) for a in alpha_pair(self.scheduler, t, num_inference_steps))
        entry: dict[str, Any] = {"guided": probe is not None}
        if probe is None:  # plain DDIM with c_hat (also pix2pix-zero's ablation "delta_c only")
            with torch.no_grad():
                eps = self._cfg_eps(x, x, t, self.edited)
            return ddim_step(x, eps, a_t, a_prev), entry, {"guided_copies": None, "stepped_from": x}

        both_copies = self.mode == "p2pzero_code" and self.use_cfg
        if both_copies:  # the official code: X = [x; x] under [c_neg; c_hat], compared with both reference halves
            X, embeds, rows = torch.cat([x, x]), torch.cat([self.negative.embeds, self.edited.embeds]), [0, 1]
        else:  # Alg. 1: one latent under c_hat, compared with the conditional reference half
            X, embeds, rows = x, self.edited.embeds, [1 if self.use_cfg else 0]
        X = X.detach().requires_grad_(True)
        with torch.enable_grad(), gradient_checkpointing(self.unet, self.checkpointing):
            probe.compare(reference, rows)
            self._unet(X, t, embeds)
            grad, entry_losses = self._gradient(X, probe)  # a checkpointed backward replays the compared forward
            probe.off()
        entry.update(entry_losses)
        X_new = (X - self.lr * grad).detach()  # Eq. 18: one SGD step of rate lambda per timestep
        with torch.no_grad():
            if both_copies:  # each CFG branch at its own copy; the negative-prompt copy carries on
                eps = self._cfg_eps(X_new[:1], X_new[1:], t, self.edited)
                start = X_new[:1]
            else:
                eps = self._cfg_eps(X_new, X_new, t, self.edited)
                # Eq. 18 and the code step from the updated latent; Alg. 1 line 16 read literally does not
                start = X_new if self.update_before else x
        return ddim_step(start, eps, a_t, a_prev), entry, {"guided_copies": X_new, "stepped_from": start}

    def _gradient(self, X: torch.Tensor, probe: GuidanceProbe):
        """grad_X of L_t = lambda_c L_c + lambda_e L_e (Eq. 17); per-term norms too when a log is wanted."""
        terms = [(w, loss) for w, loss in ((self.lambda_xa, probe.loss_xa), (self.lambda_cut, probe.loss_cut))
                 if w > 0 and loss is not None]
        info = {"loss_xa": _item(probe.loss_xa), "loss_cut": _item(probe.loss_cut)}
        info["loss"] = sum(w * float(loss.detach()) for w, loss in terms)
        if not terms:
            return torch.zeros_like(X), info
        probe.loss_xa = probe.loss_cut = None  # held by `terms`; a checkpointed replay must not add to them
        probe.replaying = True
        try:
            return self._backward(X, terms, info), info
        finally:
            probe.replaying = False

    def _backward(self, X: torch.Tensor, terms: list, info: dict) -> torch.Tensor:
        """The combined gradient (and each term's norm when logging) while the probe knows it is replaying."""
        if self.want_log and len(terms) > 1:
            # an extra backward per term, so the two terms' gradient norms can be compared (lambda_e calibration);
            # the step still uses the combined gradient below, so logging does not change the result
            names = [n for n, w in (("xa", self.lambda_xa), ("cut", self.lambda_cut)) if w > 0]
            for name, (w, loss) in zip(names, terms):
                (g,) = torch.autograd.grad(loss, X, retain_graph=True)
                info[f"grad_norm_{name}"] = float((w * g).norm())
        (grad,) = torch.autograd.grad(sum(w * loss for w, loss in terms), X)
        info["grad_norm"] = float(grad.norm())
        return grad


def _item(x) -> float | None:
    return None if x is None else float(x.detach())


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _check_width(d: EditDirection, width: int) -> EditDirection:
    if d.delta.shape[-1] != width:
        raise InputError(f"the edit direction has width {d.delta.shape[-1]} but this model's text encoder has "
                         f"{width}; it was made for another model")
    return d


def _describe(value) -> str:
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return "tensor"
    return f"{len(value)} sentences"
