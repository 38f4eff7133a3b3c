"""``styleforge pair train`` / ``styleforge pair apply``: PairCustomization (learn a style from one image pair)."""

from __future__ import annotations

import argparse
from argparse import BooleanOptionalAction

from .. import validation as V
from .common import HelpFormatter, add_common_args, add_memory_args, add_subcommand, memory_savers


def _int_list(value: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    for v in values:
        why = V.count.problem(v)
        if why:
            raise argparse.ArgumentTypeError(f"each iteration {why}")
    return values


def register(sub) -> None:
    p = add_subcommand(sub, "pair", help="PairCustomization: learn a style from one before/after image pair, apply it",
                       description="PairCustomization (Jones et al., 2024): train content and style LoRAs with "
                                   "orthogonal fixed down-projections on one (photo, stylized) pair, then generate with "
                                   "style guidance.")
    actions = p.add_subparsers(dest="pair_command", metavar="ACTION", title="actions")
    _register_train(actions)
    _register_apply(actions)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _register_train(actions) -> None:
    from ..loading import DEFAULT_SD1_MODEL
    from ..pair_customization.constants import DEFAULT_BASIS_SEED, DEFAULT_TARGETS

    p = actions.add_parser("train", help="learn a style from a content image and its stylized version",
                           description="Trains for --iterations (content adapter from 0, style adapter from "
                                       "--style-start) and writes STYLE_DIR/style.safetensors + style.json. Defaults are "
                                       "the official code's (spec §3.9).", formatter_class=HelpFormatter)
    g = p.add_argument_group("inputs")
    g.add_argument("--content", required=True, help="the content image (e.g. the photo)")
    g.add_argument("--styled", required=True, help="the same scene in the target style")
    g.add_argument("--style", required=True, dest="style_word", help="a few words naming the style (prompt suffix 'in <STYLE> style')")
    g.add_argument("--subject", default="scene", help="what the pair shows; builds the content prompt 'a photo of a <TOKEN> <SUBJECT>'")
    g.add_argument("--content-prompt", default=None, help="explicit content prompt (must contain --token)")
    g.add_argument("--token", default="sbu", help="rare identifier token V*")
    g = p.add_argument_group("adapters")
    g.add_argument("--content-rank", type=V.count, default=64, help="rank r_c of the content LoRA")
    g.add_argument("--style-rank", type=V.count, default=64, help="rank r_s of the style LoRA (r_c + r_s <= smallest layer width)")
    g.add_argument("--content-alpha", type=V.optional_positive, default=None, help="LoRA alpha (default: = rank, scale 1)")
    g.add_argument("--style-alpha", type=V.optional_positive, default=None, help="LoRA alpha (default: = rank, scale 1)")
    g.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated module-name suffixes to adapt")
    g.add_argument("--basis-seed", type=int, default=DEFAULT_BASIS_SEED, help="seed of the orthonormal bases")
    g.add_argument("--orthogonal", action=BooleanOptionalAction, default=True, help="fixed orthonormal down-projections (--no-orthogonal: trainable Gaussian A, the ablation)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--iterations", type=V.count, default=750, help="training iterations (content step each, style step from --style-start)")
    g.add_argument("--style-start", type=V.non_negative_int, default=250, help="first iteration with a style step")
    g.add_argument("--lr", type=V.positive, default=1e-5, help="AdamW learning rate (constant)")
    g.add_argument("--weight-decay", type=V.non_negative, default=1e-4, help="AdamW weight decay (official code)")
    g.add_argument("--adam-beta1", type=V.Number(float, 0, 0.999999), default=0.9, help="AdamW beta1")
    g.add_argument("--adam-beta2", type=V.Number(float, 0, 0.999999), default=0.999, help="AdamW beta2")
    g.add_argument("--adam-eps", type=V.positive, default=1e-8,
                   help="AdamW epsilon; 4e-8 reproduces the official launch bit for bit (it divides each loss by its "
                        "gradient accumulation 4, which for Adam equals eps x 4)")
    g.add_argument("--max-grad-norm", type=V.optional_positive, default=None, help="gradient clipping (official: none)")
    g.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto", help="frozen weights in half precision, LoRA in fp32 (auto: fp16 on CUDA)")
    g = p.add_argument_group("data")
    g.add_argument("--resolution", type=V.side, default=512, help="training crop size")
    g.add_argument("--center-crop", action=BooleanOptionalAction, default=True, help="centre crop (--no-center-crop: random crop, as the official code)")
    g.add_argument("--flip-probability", type=V.fraction, default=0.0, help="joint horizontal flip probability (official: 1.0)")
    g.add_argument("--parity-mode", action=BooleanOptionalAction, default=False, help="the official data pipeline: random crop and always flip")
    g.add_argument("--vae-sample", action=BooleanOptionalAction, default=True, help="encode to a posterior sample (official) or its mean")
    g = p.add_argument_group("checkpoints and validation")
    g.add_argument("--checkpoint-every", type=V.non_negative_int, default=250, help="save a resumable checkpoint every N iterations (0: only at the end)")
    g.add_argument("--keep-checkpoints", type=V.non_negative_int, default=2, help="how many recent checkpoints to keep (0: all)")
    g.add_argument("--resume", nargs="?", const="latest", default=None, help="continue from the newest checkpoint in STYLE_DIR (or a given checkpoint folder)")
    g.add_argument("--validate-at", type=_int_list, default=(), help="comma-separated iterations after which to write validation images")
    g.add_argument("--validation-steps", type=V.steps, default=25, help="DDIM steps of the validation images")
    g.add_argument("--validation-guidance-scale", type=V.finite, default=7.5, help="CFG of the validation images")
    g.add_argument("--save-content", action=BooleanOptionalAction, default=False, help="also export the content adapter (STYLE_DIR/content/, a style folder of its own)")
    g.add_argument("--progress", action=BooleanOptionalAction, default=True, help="show a progress bar")
    add_memory_args(p, offload=("none", "model"), vae="slicing",  # the pair is encoded as one batch of two
                    checkpointing="recompute UNet activations in backward (exact; less memory, slower)")
    add_common_args(p, model_default=DEFAULT_SD1_MODEL, output_help="style folder to write (style.safetensors, style.json, checkpoints/)",
                    dtype_default="fp32")
    p.set_defaults(func=run_train)


def _register_apply(actions) -> None:
    from ..pair_customization.constants import SCHEDULERS

    p = actions.add_parser("apply", help="generate (or restyle a photo) with one or more learned styles",
                           description="Style guidance (paper Eq. 10/11) on the unmodified base model. Several --style "
                                       "flags blend styles, each with its --style-scale.", formatter_class=HelpFormatter)
    g = p.add_argument_group("inputs")
    g.add_argument("--style", action="append", required=True, dest="styles",
                   help="style folder or LoRA .safetensors (repeat to blend): a styleforge style, or a diffusers-format "
                        "LoRA such as the official script's pytorch_lora_weights.safetensors (then give --style-word)")
    g.add_argument("--style-word", action="append", default=None, dest="style_words",
                   help="the words of the style suffix 'in <WORDS> style' (official: INSTANCE_PROMPT_STYLE without "
                        "'in'/'style'); one for all styles or one per --style; overrides a style's own word")
    g.add_argument("--prompt", required=True, help="what to generate (for --image: a description of the photo)")
    g.add_argument("--negative-prompt", default=None, help="negative prompt (default: empty; for --image: the prompt itself, which cancels the CFG term)")
    g.add_argument("--image", default=None, help="restyle this photo through DDIM inversion instead of generating")
    g = p.add_argument_group("guidance")
    g.add_argument("--style-scale", type=V.finite, nargs="+", default=[3.0],
                   help="lambda_style, one for all styles or one per --style (official pipeline default 3; its example script 4)")
    g.add_argument("--guidance-scale", type=V.finite, default=None, help="classifier-free guidance (default: 7.5 SD 1.x, 5 SDXL)")
    g.add_argument("--style-start", type=V.non_negative_int, default=None,
                   help="plain-CFG steps before style guidance (default 0: the official code guides from the first step; "
                        "the paper's structure lock is 10 of 50)")
    g.add_argument("--style-start-timestep", type=V.non_negative_int, default=None,
                   help="instead: plain CFG while t > this (the official start_LoRA_step=800 acts only on its LoRA-scale "
                        "path, --mode lora_scale, not on style guidance)")
    g.add_argument("--lora-scale", type=V.finite, default=1.0, help="strength of the style adapter inside the style pass")
    g.add_argument("--mode", choices=("style_guidance", "lora_scale"), default="style_guidance",
                   help="style guidance (Eq. 10) or the LoRA-scale baseline (Eq. 3: --style-scale is the LoRA strength)")
    g.add_argument("--steps", type=V.steps, default=50, help="sampling steps")
    g.add_argument("--scheduler", choices=SCHEDULERS, default="euler",
                   help="sampler: euler = the official code (SDXL's own scheduler), pndm = the paper and SD 1.5's stock "
                        "sampler (--image always uses DDIM)")
    g.add_argument("--height", type=V.side, default=None, help="default: the model's resolution")
    g.add_argument("--width", type=V.side, default=None, help="default: the model's resolution")
    g = p.add_argument_group("outputs")
    g.add_argument("--save-base", action=BooleanOptionalAction, default=False, help="also write STEM.base.png: the unstyled image from the same seed")
    g.add_argument("--cache", action=BooleanOptionalAction, default=True, help="read and write the inversion cache (--image; --no-cache: neither)")
    add_memory_args(p)
    add_common_args(p, model_default=None, model_help="base model (default: the one the first style was trained on)")
    p.set_defaults(func=run_apply)


# ----------------------------------------------------------------------------------------------- train


def run_train(args) -> int:
    from pathlib import Path

    from ..diffusion.pipeline import StyleforgePipeline
    from ..errors import InputError
    from ..io import load_image
    from ..pair_customization.train import PairCustomizationConfig, PairCustomizationTrainer, _check_output_dir
    from .common import load_pipeline

    out = Path(args.output)
    for name in ("content", "styled"):  # refuse unusable inputs and outputs before loading the model
        load_image(getattr(args, name), name=f"{name} image")
    _check_output_dir(out, resume=bool(args.resume), overwrite=args.overwrite)
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    content_prompt = args.content_prompt or f"a photo of a {args.token} {args.subject}"
    config = PairCustomizationConfig(
        style_word=args.style_word, content_prompt=content_prompt, token=args.token, content_rank=args.content_rank,
        style_rank=args.style_rank, content_alpha=args.content_alpha, style_alpha=args.style_alpha,
        targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()), basis_seed=args.basis_seed,
        orthogonal=args.orthogonal, iterations=args.iterations, style_start=args.style_start, lr=args.lr,
        weight_decay=args.weight_decay, adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
        max_grad_norm=args.max_grad_norm, resolution=args.resolution,
        center_crop=False if args.parity_mode else args.center_crop,
        flip_probability=1.0 if args.parity_mode else args.flip_probability, vae_sample=args.vae_sample,
        seed=args.seed if args.seed is not None else 0, mixed_precision=args.mixed_precision,
        gradient_checkpointing=memory_savers(args).gradient_checkpointing, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints or None, validation_iterations=tuple(args.validate_at),
        validation_steps=args.validation_steps, validation_guidance_scale=args.validation_guidance_scale,
        save_content=args.save_content)
    config.validate()
    pipe = load_pipeline(StyleforgePipeline, args)
    trainer = PairCustomizationTrainer(pipe, config)
    resume = args.resume if args.resume in (None, "latest") else Path(args.resume)
    result = trainer.train(args.content, args.styled, out, resume=resume, overwrite=args.overwrite, progress=args.progress)
    last = result.history[-1] if result.history else {}
    losses = ", ".join(f"{k.replace('_loss', '')} loss {v:.4f}" for k, v in last.items() if k.endswith("_loss"))
    print(f"wrote {out / 'style.safetensors'} ({trainer.iteration} iterations{'; ' + losses if losses else ''})")
    return 0


# ----------------------------------------------------------------------------------------------- apply


def run_apply(args) -> int:
    from pathlib import Path

    from ..diffusion.inversion import InversionCache
    from ..errors import InputError
    from ..io import check_output_path, load_image, save_image, sibling_path
    from ..pair_customization.pipeline import PairCustomizationPipeline
    from ..pair_customization.style_io import StyleAdapter
    from .common import load_pipeline

    styles = [StyleAdapter.load(s) for s in args.styles]  # bad style paths fail before the model loads
    words = args.style_words or []
    if len(words) not in (0, 1, len(styles)):
        raise InputError(f"give one --style-word for all styles or one per --style ({len(styles)})")
    for style, word in zip(styles, words * len(styles) if len(words) == 1 else words):
        style.metadata["style_word"] = word
    wordless = [s for s, style in zip(args.styles, styles) if not style.style_word]
    if wordless:
        raise InputError(f"{wordless[0]} carries no style word (a LoRA saved outside styleforge): pass --style-word, "
                         "e.g. --style-word 'digital art' for the official suffix 'in digital art style'")
    inputs = ([args.image] if args.image else []) + list(args.styles)
    if args.image:
        load_image(args.image, name="image")
    out = check_output_path(args.output, overwrite=args.overwrite, inputs=inputs)
    base_out = check_output_path(sibling_path(out, "base"), overwrite=args.overwrite, inputs=inputs) if args.save_base else None
    if len(args.style_scale) not in (1, len(styles)):
        raise InputError(f"give one --style-scale for all styles or one per --style ({len(styles)})")
    if args.model is None:
        args.model = styles[0].base_model
        if not args.model or args.model == "components":
            raise InputError("the style does not name its base model; pass --model")
    pipe = load_pipeline(PairCustomizationPipeline, args)
    for loaded in list(pipe.styles):  # a model kept from an earlier command (batch, web) starts without styles
        pipe.unload_style(loaded)
    names = []
    for i, style in enumerate(styles):
        stem = Path(args.styles[i]).stem if Path(args.styles[i]).is_file() else Path(args.styles[i]).name
        names.append(pipe.load_style(style, name=stem if stem not in names else f"{stem}{i}"))
    scales = args.style_scale * (len(styles) if len(args.style_scale) == 1 else 1)
    params = dict(prompt=args.prompt, styles=names, style_scale=dict(zip(names, scales)), guidance_scale=args.guidance_scale,
                  num_inference_steps=args.steps, scheduler="ddim" if args.image else args.scheduler,
                  style_start_step=args.style_start, style_start_timestep=args.style_start_timestep,
                  lora_scale=args.lora_scale, mode=args.mode, height=args.height, width=args.width, seed=args.seed)
    negative = args.negative_prompt
    if args.image:
        result = pipe(image=args.image, negative_prompt=negative, return_base=args.save_base,
                      inversion_cache=None if not args.cache else InversionCache(), **params)
    else:
        result = pipe(negative_prompt=negative or "", return_base=args.save_base, **params)
    meta = pipe.metadata("pair-customization", **{k: v for k, v in params.items() if k != "styles"},
                         styles={n: s.metadata.get("style_word") for n, s in zip(names, styles)},
                         negative_prompt=negative, image=args.image)
    print(f"wrote {save_image(result.images[0], out, metadata=meta, overwrite=args.overwrite, inputs=inputs)}")
    if base_out is not None:
        meta_base = dict(meta, params=dict(meta['params'], style_scale=0))
        print(f"wrote {save_image(result.base_images[0], base_out, metadata=meta_base, overwrite=args.overwrite, inputs=inputs)}")
    return 0


