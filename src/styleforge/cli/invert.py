"""``styleforge invert``: invert an image once, save the inversion, reuse it in any method."""

from __future__ import annotations

from argparse import BooleanOptionalAction
from .. import validation as V
from .common import add_common_args, add_memory_args, add_size_args, add_subcommand


def register(sub) -> None:
    from ..loading import DEFAULT_SD1_MODEL

    p = add_subcommand(sub, "invert", help="invert an image (DDIM or edit-friendly DDPM) and save the inversion for reuse",
                       description="Invert an image and write the inversion (.safetensors) that methods accept as a "
                                   "precomputed inversion; optionally write its reconstruction.")
    p.add_argument("image", help="input image")
    p.add_argument("--prompt", default="", help="prompt used for inversion")
    p.add_argument("--negative-prompt", default="", help="unconditional prompt for guidance")
    p.add_argument("--kind", choices=("edit_friendly", "ddim"), default="edit_friendly", help="inversion kind")
    p.add_argument("--steps", "--num-inference-steps", dest="num_inference_steps", type=V.steps, default=50, help="grid size K")
    p.add_argument("--guidance-scale", type=V.finite, default=1.0, help="classifier-free guidance during inversion")
    p.add_argument("--eta", type=V.non_negative, default=1.0, help="edit-friendly DDPM eta")
    p.add_argument("--keep-last-noise", action=BooleanOptionalAction, default=False, help="keep the last noise map (exact reconstruction) instead of zeroing it as the official code does")
    add_size_args(p)
    p.add_argument("--reconstruction", default=None, help="also write the reconstruction to this PNG")
    p.add_argument("--cache", action=BooleanOptionalAction, default=True, help="read and write the inversion cache (--no-cache: neither)")
    add_memory_args(p)
    add_common_args(p, model_default=DEFAULT_SD1_MODEL, output_help="inversion file (.safetensors)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..diffusion.inversion import InversionCache
    from ..diffusion.pipeline import InversionPipeline
    from ..io import check_output_path, save_image
    from ..runtime import make_generator
    from .common import load_pipeline, size_from_args

    out = check_output_path(args.output, overwrite=args.overwrite, inputs=[args.image], suffix=".safetensors")
    if args.reconstruction:
        check_output_path(args.reconstruction, overwrite=args.overwrite, inputs=[args.image])
    pipe = load_pipeline(InversionPipeline, args)
    result = pipe(args.image, args.prompt, kind=args.kind, num_inference_steps=args.num_inference_steps,
                  guidance_scale=args.guidance_scale, negative_prompt=args.negative_prompt, size=size_from_args(args, pipe),
                  generator=make_generator(args.seed), seed=args.seed, eta=args.eta,
                  zero_last_noise=not args.keep_last_noise, cache=None if not args.cache else InversionCache())
    result.inversion.save(out)
    print(f"wrote {out}")
    if args.reconstruction:
        meta = pipe.metadata("inversion-reconstruction", **result.inversion.settings())
        print(f"wrote {save_image(result.reconstruction[0], args.reconstruction, metadata=meta, overwrite=args.overwrite, inputs=[args.image])}")
    return 0
