"""``styleforge appearance``: Cross-Image Attention appearance transfer."""

from __future__ import annotations

from argparse import BooleanOptionalAction
from .. import validation as V
from .common import add_common_args, add_memory_args, add_size_args, add_subcommand


def register(sub) -> None:
    from ..loading import DEFAULT_SD1_MODEL

    p = add_subcommand(
        sub, "appearance", help="Cross-Image Attention: put the look of one image onto the structure of another",
        description="Zero-shot appearance transfer (Alaluf et al., SIGGRAPH 2024). Defaults replicate the official "
                    "code; ranges count the iterations left after --skip-steps.")
    g = p.add_argument_group("inputs")
    g.add_argument("--structure", required=True, help="image whose layout and shape are kept")
    g.add_argument("--appearance", required=True, help="image whose colours and textures are transferred")
    g.add_argument("--domain", default=None, help="object noun, e.g. animal, building, car, cake (builds 'A photo of a DOMAIN')")
    g.add_argument("--prompt", default=None, help="explicit prompt instead of 'A photo of a DOMAIN'")
    g.add_argument("--object-noun", default=None, help="word of the prompt that names the object (default: the domain)")
    g.add_argument("--structure-mask", default=None, help="object mask of the structure image (replaces self-segmentation)")
    g.add_argument("--appearance-mask", default=None, help="object mask of the appearance image (replaces self-segmentation)")
    g.add_argument("--structure-inversion", default=None, help="precomputed edit-friendly inversion (.safetensors) of the structure image")
    g.add_argument("--appearance-inversion", default=None, help="precomputed edit-friendly inversion of the appearance image")
    g = p.add_argument_group("method")
    g.add_argument("--steps", "--num-inference-steps", dest="num_inference_steps", type=V.steps, default=100, help="DDIM grid size K")
    g.add_argument("--skip-steps", type=V.non_negative_int, default=32, help="noisiest steps skipped S")
    g.add_argument("--swap-range-full", type=V.int_pair, default=(10, 90), help="START,END iterations of cross-image attention at the latent's resolution (code: cross_attn_64_range)")
    g.add_argument("--swap-range-half", type=V.int_pair, default=(10, 70), help="START,END at half that resolution (code: cross_attn_32_range)")
    g.add_argument("--contrast-strength", type=V.positive, default=1.67, help="attention contrast beta (1 = off)")
    g.add_argument("--contrast-clip", action=BooleanOptionalAction, default=True, help="clip the contrasted map to [0, 1] without renormalising (official)")
    g.add_argument("--swap-guidance-scale", type=V.finite, default=3.5, help="appearance guidance alpha (<= 1: off)")
    g.add_argument("--swap-guidance-schedule", choices=("linear_to_half", "constant"), default="linear_to_half", help="alpha decays to max(alpha/2, 1) (code) or stays constant (paper)")
    g.add_argument("--guidance-range", type=V.int_pair, default=None, help="START,END iterations (inclusive) with guidance (default: the full-resolution swap range)")
    g.add_argument("--adain", choices=("masked", "full", "off"), default="masked", help="AdaIN on the output latent")
    g.add_argument("--adain-range", type=V.int_pair, default=(20, 100), help="START,END iterations with AdaIN")
    g.add_argument("--mask-fallback", choices=("full", "none"), default="full", help="an empty mask: full AdaIN with a warning, or the official NaN")
    g.add_argument("--structure-injection", action=BooleanOptionalAction, default=True, help="use the structure's keys/values on some early steps")
    g.add_argument("--structure-injection-period", type=V.count, default=5, help="inject every N steps")
    g.add_argument("--structure-injection-limit", type=V.non_negative_int, default=40, help="only before this step")
    g.add_argument("--step-index-lag", type=int, choices=(0, 1), default=1, help="1 replicates the code's one-step window lag; 0 is the paper")
    g.add_argument("--freeu", choices=("cia_backbone", "official", "off"), default="cia_backbone", help="FreeU variant (also during inversion)")
    for name, default in (("b1", 1.2), ("b2", 1.4), ("s1", 0.9), ("s2", 0.2)):
        g.add_argument(f"--freeu-{name}", type=V.finite, default=default, help=f"FreeU {name}")
    g.add_argument("--inversion-guidance-scale", type=V.finite, default=3.5, help="CFG of the inversion")
    g.add_argument("--exact-reconstruction", action=BooleanOptionalAction, default=False, help="denoise with the inversion's CFG too (exact reconstructions, 2x cost)")
    g.add_argument("--num-segments", type=V.Number(int, 1, 64), default=5, help="k-means clusters of the self-segmentation")
    g.add_argument("--segmentation-seed", type=int, default=1, help="seed of the k-means RandomState (scikit-learn KMeans; the official code: 1)")
    add_size_args(g)
    g = p.add_argument_group("speed and memory")
    g.add_argument("--guidance-rows", choices=("output", "all"), default="output", help="run the plain guidance pass for the output row only (exact) or for all rows (official)")
    g.add_argument("--cache", action=BooleanOptionalAction, default=True, help="read and write the inversion cache (--no-cache: neither)")
    g = p.add_argument_group("outputs")
    g.add_argument("--num-seeds", type=V.Number(int, 1, 1000), default=1, help="one result per seed: SEED, SEED+1, ... (written as STEM.seedN.png)")
    g.add_argument("--save-strip", action=BooleanOptionalAction, default=False, help="also write STEM.strip.png: structure | appearance | transfer")
    g.add_argument("--save-reconstructions", action=BooleanOptionalAction, default=False, help="also write STEM.structure_recon.png and STEM.appearance_recon.png")
    g.add_argument("--save-masks", action=BooleanOptionalAction, default=False, help="also write the AdaIN masks as STEM.structure_mask.png / STEM.appearance_mask.png")
    add_memory_args(p, attention_chunking=True)
    add_common_args(p, model_default=DEFAULT_SD1_MODEL, seed_default=42)
    p.set_defaults(func=run)


def _outputs(args, seed):
    from pathlib import Path

    from ..io import check_output_path, sibling_path

    base = Path(args.output)
    main = base if args.num_seeds == 1 else base.with_name(f"{base.stem}.seed{seed}.png")
    paths = {"transfer": main}
    if args.save_strip:
        paths["strip"] = sibling_path(main, "strip")
    if args.save_reconstructions:
        paths["structure_recon"] = sibling_path(main, "structure_recon")
        paths["appearance_recon"] = sibling_path(main, "appearance_recon")
    if args.save_masks:
        paths["structure_mask"] = sibling_path(main, "structure_mask")
        paths["appearance_mask"] = sibling_path(main, "appearance_mask")
    inputs = [args.structure, args.appearance, args.structure_mask, args.appearance_mask, args.structure_inversion,
              args.appearance_inversion]
    return {k: check_output_path(v, overwrite=args.overwrite, inputs=[i for i in inputs if i]) for k, v in paths.items()}


def run(args) -> int:
    from PIL import Image

    from ..cross_image import CrossImageAttentionPipeline
    from ..diffusion.freeu import FreeUConfig
    from ..diffusion.inversion import Inversion, InversionCache
    from ..io import center_crop_resize, load_image, make_strip, save_image
    from .common import load_pipeline, size_from_args

    seeds = [args.seed + k for k in range(max(1, args.num_seeds))]
    planned = {s: _outputs(args, s) for s in seeds}  # refuse existing outputs before any work
    load_inv = lambda p: Inversion.load(p) if p else None  # noqa: E731
    pipe = load_pipeline(CrossImageAttentionPipeline, args)
    params = dict(
        domain=args.domain, prompt=args.prompt, object_noun=args.object_noun, num_inference_steps=args.num_inference_steps,
        skip_steps=args.skip_steps, swap_range_full=args.swap_range_full, swap_range_half=args.swap_range_half,
        adain=args.adain, adain_range=args.adain_range, mask_fallback=None if args.mask_fallback == "none" else "full",
        contrast_strength=args.contrast_strength, contrast_clip=args.contrast_clip,
        swap_guidance_scale=args.swap_guidance_scale, swap_guidance_schedule=args.swap_guidance_schedule,
        guidance_range=args.guidance_range, structure_injection=args.structure_injection,
        structure_injection_period=args.structure_injection_period, structure_injection_limit=args.structure_injection_limit,
        step_index_lag=args.step_index_lag, freeu=args.freeu,
        inversion_guidance_scale=args.inversion_guidance_scale, exact_reconstruction=args.exact_reconstruction,
        num_segments=args.num_segments, segmentation_seed=args.segmentation_seed, size=size_from_args(args, pipe),
        guidance_rows=args.guidance_rows, attention_chunk_size=args.attention_chunk_size)
    freeu_config = FreeUConfig(b1=args.freeu_b1, b2=args.freeu_b2, s1=args.freeu_s1, s2=args.freeu_s2)
    cache = None if not args.cache else InversionCache()
    for seed in seeds:
        out = pipe(args.structure, args.appearance, freeu_config=freeu_config, structure_mask=args.structure_mask,
                   appearance_mask=args.appearance_mask, structure_inversion=load_inv(args.structure_inversion),
                   appearance_inversion=load_inv(args.appearance_inversion), inversion_cache=cache, seed=seed, **params)
        meta = pipe.metadata("cross-image-attention", seed=seed, structure=args.structure, appearance=args.appearance,
                             freeu_config=freeu_config.__dict__, **params)
        paths = planned[seed]
        write = lambda img, key: print(f"wrote {save_image(img, paths[key], metadata=meta, overwrite=args.overwrite, inputs=[args.structure, args.appearance])}")  # noqa: E731
        write(out.transfer, "transfer")
        if args.save_strip:
            size = out.transfer.size
            inputs = [center_crop_resize(load_image(p), size) for p in (args.structure, args.appearance)]
            write(make_strip(inputs + [out.transfer]), "strip")
        if args.save_reconstructions:
            write(out.structure_reconstruction, "structure_recon")
            write(out.appearance_reconstruction, "appearance_recon")
        if args.save_masks and out.masks:
            for role in ("structure", "appearance"):
                if out.masks.get(role) is None:  # a run too short to reach the self-segmentation has no mask
                    continue
                m = out.masks[role][0, 0].float().cpu().numpy()
                write(Image.fromarray((m * 255).astype("uint8")).resize(out.transfer.size, Image.NEAREST), f"{role}_mask")
    return 0
