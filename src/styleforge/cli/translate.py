"""``styleforge translate`` (pix2pix-zeroCon / pix2pix-zero) and ``styleforge direction build``."""

from __future__ import annotations

import argparse
from argparse import BooleanOptionalAction

from .. import validation as V
from .common import add_common_args, add_memory_args, add_size_args, add_subcommand


def _add_edit_args(p: argparse.ArgumentParser, *, with_direction: bool) -> None:
    g = p.add_argument_group("the edit (give one kind)")
    if with_direction:
        g.add_argument("--direction", metavar="FILE", help="ready edit direction (from `styleforge direction build`, or a (1,77,768) .pt tensor)")
    g.add_argument("--source", help="source concept word, e.g. cat (sentences around it come from --sentence-source)")
    g.add_argument("--target", help="target concept word, e.g. dog")
    g.add_argument("--source-prompt", help="source prompt P (also the caption unless --caption is given)")
    g.add_argument("--target-prompt", help="target prompt P-hat, e.g. the caption with the change")
    g.add_argument("--sentences-source", metavar="FILE", help="source sentence bank, one sentence a line")
    g.add_argument("--sentences-target", metavar="FILE", help="target sentence bank, one sentence a line")
    g.add_argument("--source-embedding", metavar="FILE", help="precomputed source mean embedding (.pt (1,77,768) as pix2pix-zero ships, or .safetensors)")
    g.add_argument("--target-embedding", metavar="FILE", help="precomputed target mean embedding")
    g.add_argument("--sentence-source", choices=("template", "prompt_template", "single"), default=None,
                   help="sentences for word/prompt edits: the built-in template generator, paired prompt variations, or "
                        "the word/prompt alone; unset: template for words, single for prompts")
    g.add_argument("--num-sentences", type=V.Number(int, 1, 100_000), default=1000, help="sentences per side from the generator")
    g.add_argument("--direction-cache", action=BooleanOptionalAction, default=True, help="read and write cached mean embeddings")


def register(sub) -> None:
    from ..loading import DEFAULT_SD1_MODEL

    p = add_subcommand(sub, "translate", help="text-guided image-to-image translation (pix2pix-zeroCon; pix2pix-zero with --contrastive-weight 0)",
                       description="Translate an image (e.g. cat -> dog) with pix2pix-zeroCon (Si et al. 2025): BLIP caption, "
                                   "regularised DDIM inversion, an edit direction from sentence banks, then a guided "
                                   "denoising pass that keeps the reference's cross-attention maps (pix2pix-zero) and "
                                   "patch features (PatchNCE).")
    p.add_argument("image", help="input image")
    _add_edit_args(p, with_direction=True)
    p.add_argument("--edit-multiplier", type=V.finite, default=1.0, help="w in c_hat = c + w * delta_c")
    g = p.add_argument_group("caption")
    g.add_argument("--caption", help="caption of the input image (default: BLIP)")
    g.add_argument("--captioner", default="auto", help="BLIP captioning model id or folder; 'auto' = Salesforce/blip-image-captioning-base; 'none' = never caption")
    g = p.add_argument_group("guidance")
    g.add_argument("--steps", "--num-inference-steps", dest="steps", type=V.steps, default=50, help="DDIM steps N")
    g.add_argument("--xa-guidance", type=V.non_negative, default=0.1, help="guidance rate lambda: one gradient step of this size per timestep (Eq. 18); with CFG the p2pzero_code mode's step per latent copy is half the paper mode's")
    g.add_argument("--xa-weight", type=V.non_negative, default=1.0, help="lambda_c, weight of the cross-attention loss")
    g.add_argument("--contrastive-weight", type=V.non_negative, default=1.0, help="lambda_e, weight of the PatchNCE loss (0 = pix2pix-zero); the loss is a mean over the S patches and the CFG copies, so 1 here is 1/S of Eq. 15's lambda_e")
    g.add_argument("--cfg-scale", "--negative-guidance-scale", dest="cfg_scale", type=V.finite, default=5.0, help="classifier-free guidance scale of both passes")
    g.add_argument("--negative-prompt", default=None, help="negative prompt (default: the caption, pix2pix-zero's real-image mode)")
    g.add_argument("--guidance-mode", choices=("p2pzero_code", "paper"), default="p2pzero_code",
                   help="official code (both CFG copies guided, the negative copy stepped) or Algorithm 1 (one latent, conditional branch)")
    g.add_argument("--update-latent-before-step", action=BooleanOptionalAction, default=True, help="paper mode: DDIM-step from the updated latent (Eq. 18) or the un-updated one (Alg. 1 line 16)")
    g.add_argument("--guided-steps", type=V.fraction_pair, default=(0.0, 1.0), metavar="START,END", help="fraction of the steps that get guidance")
    g.add_argument("--cut-layers", choices=("down_attn1", "up_attn1", "all_attn1", "down_resnet"), default="down_attn1",
                   help="PatchNCE feature layers: encoder self-attention, decoder self-attention (CDS), all, encoder ResNets")
    g.add_argument("--cut-num-patches", type=V.count, default=256, help="patches S per layer and patch size")
    g.add_argument("--cut-patch-sizes", type=V.count, nargs="+", default=[1, 2], help="patch sizes (average-pooled p x p)")
    g.add_argument("--cut-tau", type=V.positive, default=0.07, help="PatchNCE temperature")
    g = p.add_argument_group("inversion")
    g.add_argument("--inversion-grid", choices=("p2pzero", "symmetric"), default="p2pzero",
                   help="the official code's grid (N-2 UNet calls at t-1; default) or the exact inverse of the sampler's grid (diffusers)")
    g.add_argument("--reg-lambda-ac", type=V.non_negative, default=20.0, help="autocorrelation regulariser weight")
    g.add_argument("--reg-lambda-kl", type=V.non_negative, default=20.0, help="KL regulariser weight")
    g.add_argument("--reg-steps", type=V.non_negative_int, default=5, help="regulariser outer iterations per inversion step (0 = off)")
    g.add_argument("--reg-rolls", type=V.non_negative_int, default=5, help="autocorrelation steps per outer iteration")
    g.add_argument("--vae-sample", action=BooleanOptionalAction, default=False, help="sample the VAE posterior (seeded), as the official code does (unseeded), instead of taking its deterministic mode")
    g.add_argument("--save-inversion", metavar="FILE", help="also write the inverted latent x_T with its caption (.safetensors)")
    g.add_argument("--inversion", metavar="FILE", help="edit a saved inversion instead of inverting again (its caption is used unless --caption is given)")
    g = p.add_argument_group("runtime and outputs")
    add_size_args(g, "longer")
    g.add_argument("--reference-mode", choices=("interleaved", "stored"), default="interleaved",
                   help="run each reference step just before its guided step (least memory) or the whole reference pass first")
    g.add_argument("--offload-reference", action=BooleanOptionalAction, default=False, help="with --reference-mode stored: keep the reference records on the CPU")
    g.add_argument("--save-reconstruction", action=BooleanOptionalAction, default=False, help="also write <stem>.recon.png (the reference trajectory)")
    g.add_argument("--save-direction", metavar="FILE", help="also write the edit direction (.safetensors or .pt)")
    g.add_argument("--save-log", metavar="FILE", help="also write the per-step losses and gradient norms (JSON)")
    add_memory_args(p, checkpointing="recompute the UNet's activations in the guided steps' backward (exact; less memory, slower)")
    add_common_args(p, model_default=DEFAULT_SD1_MODEL)
    p.set_defaults(func=run)

    d = add_subcommand(sub, "direction", help="build and save pix2pix-zero edit directions",
                       description="Edit directions in the text-embedding space (mean of target sentences minus mean of "
                                   "source sentences), for `styleforge translate --direction`.")
    dsub = d.add_subparsers(dest="direction_command", metavar="SUBCOMMAND", title="subcommands")
    d.set_defaults(func=lambda args: (d.print_help(), 0)[1])
    b = add_subcommand(dsub, "build", help="precompute an edit direction and save it",
                       description="Encode the source and target sentences with the model's text encoder and write "
                                   "delta_c = mean(target) - mean(source), shape (1, 77, width). A .pt output is a bare "
                                   "tensor (pix2pix-zero's format); .safetensors keeps the provenance.")
    _add_edit_args(b, with_direction=False)
    add_common_args(b, model_default=DEFAULT_SD1_MODEL, output_help="direction file (.safetensors or .pt)")
    b.set_defaults(func=run_direction)


def _edit_kwargs(args) -> dict:
    return dict(source=args.source, target=args.target, source_prompt=args.source_prompt,
                target_prompt=args.target_prompt, source_embedding=args.source_embedding,
                target_embedding=args.target_embedding, source_sentences=args.sentences_source,
                target_sentences=args.sentences_target, sentence_source=args.sentence_source,
                num_sentences=args.num_sentences, direction_cache=None if args.direction_cache else False)


def _direction_output(path: str, overwrite: bool, inputs=()):
    from pathlib import Path

    from ..io import check_output_path

    suffix = ".pt" if Path(path).suffix == ".pt" else ".safetensors"
    return check_output_path(path, overwrite=overwrite, suffix=suffix, inputs=inputs)


def _input_files(args) -> list:
    """Every file the command reads: no output may be one of them."""
    names = ("image", "direction", "inversion", "sentences_source", "sentences_target", "source_embedding",
             "target_embedding")
    return [getattr(args, n) for n in names if getattr(args, n, None)]


def run(args) -> int:
    import json

    from ..io import check_output_path, save_image, sibling_path
    from ..pix2pix_zerocon import Pix2PixZeroConPipeline
    from ..runtime import make_generator
    from .common import load_pipeline, size_from_args

    inputs = _input_files(args)
    out = check_output_path(args.output, overwrite=args.overwrite, inputs=inputs)
    recon = check_output_path(sibling_path(out, "recon"), overwrite=args.overwrite, inputs=inputs) if args.save_reconstruction else None
    direction_out = _direction_output(args.save_direction, args.overwrite, inputs) if args.save_direction else None
    log_out = check_output_path(args.save_log, overwrite=args.overwrite, suffix=".json", inputs=inputs) if args.save_log else None
    inversion_out = check_output_path(args.save_inversion, overwrite=args.overwrite, suffix=".safetensors", inputs=inputs) if args.save_inversion else None
    caption, inverted = args.caption, None
    if args.inversion:
        from ..errors import InputError
        from ..pix2pix_zerocon.pipeline import load_inversion

        inverted, info = load_inversion(args.inversion)
        if info.get("num_inference_steps") != args.steps:
            raise InputError(f"{args.inversion} was inverted with {info.get('num_inference_steps')} steps; pass --steps "
                             f"{info.get('num_inference_steps')}")
        if args.size is None and not args.crop and info.get("size"):
            args.size = tuple(info["size"])  # (w, h) the inversion was made at
        caption = caption or info.get("caption")
    pipe = load_pipeline(Pix2PixZeroConPipeline, args)
    edit = _edit_kwargs(args)
    result = pipe(args.image, direction=args.direction, edit_multiplier=args.edit_multiplier, caption=caption,
                  inverted_latent=inverted, captioner=_captioner(args, pipe), num_inference_steps=args.steps,
                  guidance_lr=args.xa_guidance, lambda_xa=args.xa_weight, lambda_cut=args.contrastive_weight,
                  cfg_scale=args.cfg_scale, negative_prompt=args.negative_prompt, guidance_mode=args.guidance_mode,
                  update_latent_before_step=args.update_latent_before_step, guided_step_range=args.guided_steps,
                  cut_layers=args.cut_layers, cut_num_patches=args.cut_num_patches,
                  cut_patch_sizes=args.cut_patch_sizes, cut_tau=args.cut_tau, inversion_grid=args.inversion_grid,
                  reg_lambda_ac=args.reg_lambda_ac, reg_lambda_kl=args.reg_lambda_kl, reg_steps=args.reg_steps,
                  reg_rolls=args.reg_rolls, vae_sample=args.vae_sample, size=size_from_args(args, pipe),
                  generator=make_generator(args.seed), seed=args.seed, reference_mode=args.reference_mode,
                  offload_reference=args.offload_reference, return_log=bool(args.save_log), **edit)
    method = "pix2pix-zero" if args.contrastive_weight == 0 else "pix2pix-zerocon"
    meta = pipe.metadata(method, **result.params)
    print(f"caption: {result.caption}")
    print(f"wrote {save_image(result.images[0], out, metadata=meta, overwrite=args.overwrite, inputs=inputs)}")
    if recon is not None:
        meta_r = pipe.metadata(f"{method}-reconstruction", **result.params)
        print(f"wrote {save_image(result.reconstruction[0], recon, metadata=meta_r, overwrite=args.overwrite, inputs=inputs)}")
    if direction_out is not None:
        print(f"wrote {result.edit_direction.save(direction_out)}")
    if inversion_out is not None:
        from ..pix2pix_zerocon.pipeline import save_inversion

        print(f"wrote {save_inversion(inversion_out, result)}")
    if log_out is not None:
        from ..io import atomic_write

        with atomic_write(log_out) as tmp:
            tmp.write_text(json.dumps(result.log, indent=1))
        print(f"wrote {log_out}")
    return 0


def _captioner(args, pipe):
    """BLIP, kept loaded between commands of one process like the pipeline (batch, web); None: never caption."""
    if args.captioner == "none":
        return None
    from ..pix2pix_zerocon.captioning import DEFAULT_CAPTIONER, BlipCaptioner
    from .common import cached_model

    name = DEFAULT_CAPTIONER if args.captioner == "auto" else args.captioner
    return cached_model(("BlipCaptioner", name, str(pipe.unet.device)), lambda: BlipCaptioner(name, device=pipe.unet.device))


def run_direction(args) -> int:
    from ..pix2pix_zerocon import Pix2PixZeroConPipeline
    from .common import load_pipeline

    out = _direction_output(args.output, args.overwrite, _input_files(args))
    pipe = load_pipeline(Pix2PixZeroConPipeline, args)
    edit = _edit_kwargs(args)
    cache = edit.pop("direction_cache")
    direction = pipe.build_direction(cache=cache, **edit)
    info = direction.info()
    print(f"direction {info['source']!r} -> {info['target']!r}: {info['num_source']} / {info['num_target']} sentences, "
          f"norm {info['norm']:.4g}")
    print(f"wrote {direction.save(out)}")
    return 0
