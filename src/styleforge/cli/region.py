"""``styleforge region``: train, apply and interpolate the region-wise stylizer (TCP)."""

from __future__ import annotations

import shlex
import sys
from argparse import BooleanOptionalAction

from .. import validation as V
from .common import add_common_args, add_subcommand

PRESETS = ("test", "cpu64", "gpu128", "ref256")
STRIP_MIN_HEIGHT, STRIP_MAX_HEIGHT = 512, 768


def register(subparsers) -> None:
    region = add_subcommand(
        subparsers, "region",
        help="region-wise photorealistic style transfer (TCP): a small autoencoder the toolkit trains itself",
        description="Restyle a masked region of a photo with another photo's colours and tone "
                    "(You et al., 'Towards Controllable and Photorealistic Region-wise Image Manipulation', ACM MM 2021).",
    )
    sub = region.add_subparsers(dest="region_command", metavar="SUBCOMMAND", title="subcommands")
    region.set_defaults(func=lambda args: (region.print_help(), 0)[1])
    _register_apply(sub)
    _register_interpolate(sub)
    _register_train(sub)


def _register_apply(sub) -> None:
    from ..region.lift_settings import FEATHER_RANGE

    p = add_subcommand(sub, "apply", help="restyle the masked region(s) of a content image",
                       description="Restyle the masked region(s) of --content with the style of --style. Several "
                                   "--style/--mask pairs are applied one after another; without --mask the whole image "
                                   "is restyled (global transfer). Also writes OUTPUT.strip.png (inputs and result side by side).")
    p.add_argument("--content", required=True, help="content image (the photo to edit)")
    p.add_argument("--style", action="append", required=True, help="style image; repeat for several edits")
    p.add_argument("--mask", action="append", help="mask image (white = restyle), one per --style; omit for global transfer")
    p.add_argument("--strength", type=V.fraction, default=1.0, help="style strength t in [0, 1]: style code (1-t)·S_content + t·S_style")
    p.add_argument("--paste-back", action=BooleanOptionalAction, default=True,
                   help="keep every pixel outside the mask exactly as in the content image; --no-paste-back returns the "
                        "model's whole output (outside the mask: its reconstruction of the photo)")
    p.add_argument("--paste-margin", type=V.Number(int, 0, V.MAX_WORKING_SIDE), default=None, metavar="PX",
                   help="with paste-back, restyle PX working-size pixels beyond the mask before pasting back, so the region "
                        "keeps the new style up to its edge (default: one feature cell of the model, 2^d px; 0 = the mask itself)")
    _add_lift_args(p)
    p.add_argument("--composition", choices=("feature", "pixel", "content_code"), default="feature",
                   help="where regions are blended: encoder features (the method), pixels or content codes (baselines)")
    p.add_argument("--mask-resample", choices=("area", "nearest", "bilinear"), default="area", help="mask resampling to the feature grid")
    p.add_argument("--feather", type=FEATHER_RANGE, default=0.0,
                   help="Gaussian feathering of the mask, sigma in working-size pixels (0 = off); at native output size the "
                        "paste-back edge is softened by the same amount inward, so nothing outside the mask changes")
    p.add_argument("--size", type=V.side, default=None, help="working resolution (shorter side); default: the model's training size")
    p.add_argument("--save-strip", action=BooleanOptionalAction, default=True, help="also write OUTPUT.strip.png with the inputs and the result")
    add_common_args(p, model_default=None, model_help="region model folder (default: the bundled model)")
    p.set_defaults(func=run_apply)


def _register_interpolate(sub) -> None:
    p = add_subcommand(sub, "interpolate", help="write a content/style interpolation grid between two images",
                       description="Decode linear interpolations of the content codes and/or style codes from --source to "
                                   "--target (paper §4.4). Rows: content interpolation, style interpolation; columns: alpha.")
    p.add_argument("--source", required=True, help="source image (alpha = 0)")
    p.add_argument("--target", required=True, help="target image (alpha = 1)")
    p.add_argument("--mode", choices=("content", "style", "both", "all"), default="all",
                   help="which codes to interpolate; 'all' writes one row each for content, style and both")
    p.add_argument("--steps", type=V.Number(int, 2, 100), default=5, help="number of alpha values from 0 to 1")
    p.add_argument("--size", type=V.side, default=None, help="working resolution (shorter side); default: the model's training size")
    _add_lift_args(p)
    add_common_args(p, model_default=None, model_help="region model folder (default: the bundled model)", output_help="output grid PNG")
    p.set_defaults(func=run_interpolate)


def _add_lift_args(p) -> None:
    from ..region.lift_settings import DEFAULT_EPS, DEFAULT_RADIUS, DEFAULT_SIGMA, PRIORS, RADIUS_RANGE, SIGMA_RANGE

    g = p.add_argument_group("output size and detail (the model works at a small size; see styleforge.region.lift)")
    g.add_argument("--output-size", choices=("native", "working"), default="native",
                   help="native: the content image's own size, the edit lifted onto the photo; working: the model's "
                        "working-size output")
    g.add_argument("--detail", choices=("guided", "none"), default="guided",
                   help="guided: carry the edit onto the full-resolution photo with a local affine colour model (guided "
                        "filter), keeping its detail; none: upsample the working-size result")
    g.add_argument("--lift-radius", type=RADIUS_RANGE, default=DEFAULT_RADIUS, metavar="PX",
                   help="guided lift: box window radius in working-size pixels")
    g.add_argument("--lift-eps", type=V.positive, default=DEFAULT_EPS,
                   help="guided lift: regulariser epsilon, colours in [0, 1] (larger = closer to one colour matrix for the "
                        "whole region)")
    g.add_argument("--lift-sigma", type=SIGMA_RANGE, default=DEFAULT_SIGMA, metavar="PX",
                   help="guided lift: Gaussian blur (working-size px) of content and result before the fit, the band the "
                        "model reproduces (0 = fit the raw pair, as the guided filter paper)")
    g.add_argument("--lift-prior", choices=PRIORS, default="global",
                   help="guided lift: regularise toward the region's global colour matrix, or toward 0 (the paper)")


def _lift_kwargs(args) -> dict:
    return dict(output_size=args.output_size, detail=args.detail, lift_radius=args.lift_radius, lift_eps=args.lift_eps,
                lift_prior=args.lift_prior, lift_sigma=args.lift_sigma)


def _lift_metadata(args) -> dict:
    from ..region.inference import lift_settings

    settings = lift_settings(args.output_size, args.detail, args.lift_radius, args.lift_eps, args.lift_prior, args.lift_sigma)
    return {"output_size": settings.pop("output_size"), "detail": settings.pop("detail"),
            "lift": settings if args.detail == "guided" and args.output_size == "native" else None}


def _register_train(sub) -> None:
    p = add_subcommand(sub, "train", help="train a region stylizer on a folder of photos",
                       description="Train the swapping autoencoder with the code-consistency and content-alignment losses "
                                   "(spec §3). Writes checkpoints, sample grids, log.jsonl and the inference model OUTPUT/model. "
                                   "Multi-GPU: accelerate launch -m styleforge.cli.main region train ...")
    p.add_argument("--data", required=True, help="folder of training images (searched recursively; unusable files are skipped)")
    p.add_argument("--preset", choices=PRESETS + ("unit",), default="cpu64", help="model size preset")
    p.add_argument("-o", "--output", required=True, help="run folder")
    p.add_argument("--iterations", type=V.count, default=1000, help="total training iterations (a resumed run continues up to this)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue the run in OUTPUT from its latest checkpoint, or from the checkpoint folder given")
    p.add_argument("--batch-size", type=V.count, default=None, help="images per iteration per process (default: the preset's)")
    p.add_argument("--lr", type=V.positive, default=0.002, help="Adam learning rate")
    w = p.add_argument_group("loss weights")
    w.add_argument("--w-rec", type=V.non_negative, default=1.0, help="reconstruction L1 (Eq. 1)")
    w.add_argument("--w-gan", type=V.non_negative, default=1.0, help="image GAN loss (Eq. 2) and its R1")
    w.add_argument("--w-cooccur", type=V.non_negative, default=1.0, help="patch co-occurrence GAN loss and its R1")
    w.add_argument("--w-cc", type=V.non_negative, default=1.0, help="code-consistency loss (Eq. 3); 0 trains plain SwapAE")
    w.add_argument("--cc-style-weight", type=V.non_negative, default=1.0, help="lambda of Eq. 3 (weight of the style term)")
    w.add_argument("--w-ca", type=V.non_negative, default=1.0, help="content-alignment loss (Eq. 7)")
    w.add_argument("--r1-gamma", type=V.non_negative, default=10.0, help="R1 gamma of the image discriminator")
    w.add_argument("--r1-gamma-cooccur", type=V.non_negative, default=1.0, help="R1 gamma of the patch discriminator")
    w.add_argument("--r1-interval", type=V.count, default=16, help="lazy R1 every this many steps")
    r = p.add_argument_group("code-consistency / content-alignment schedule and options")
    r.add_argument("--reg-interval", type=V.count, default=16, help="K: L_CC and L_CA run every K iterations")
    r.add_argument("--reg-offset", type=V.non_negative_int, default=0, help="phase of L_CA relative to L_CC within K")
    r.add_argument("--reg-start", type=V.non_negative_int, default=0, help="warm-up: no L_CC/L_CA before this iteration")
    r.add_argument("--reg-scale-by-interval", action=BooleanOptionalAction, default=False, help="multiply L_CC/L_CA by K")
    r.add_argument("--cc-detach-targets", action=BooleanOptionalAction, default=True, help="stop-gradient on the L_CC targets C_A, S_B")
    r.add_argument("--ca-detach-target", action=BooleanOptionalAction, default=True, help="stop-gradient on the L_CA pseudo target I_g")
    r.add_argument("--ca-detach-input", action=BooleanOptionalAction, default=False, help="recompute trunk(I_g) for L_CA with I_g detached")
    r.add_argument("--ca-normalize-by-area", action=BooleanOptionalAction, default=False, help="divide each L_CA term by its mask's coverage")
    r.add_argument("--adv-on-region", action=BooleanOptionalAction, default=False, help="let the image discriminator also judge I_h")
    r.add_argument("--mask-resample", choices=("area", "nearest", "bilinear"), default="area", help="M -> M_e resampling")
    r.add_argument("--mask-coverage", type=V.Pair(V.fraction, labels=('LOW', 'HIGH')), default=(0.1, 0.7), help="LOW,HIGH coverage of random masks")
    r.add_argument("--mask-trivial-probability", type=V.fraction, default=0.0, help="probability of an all-0 or all-1 mask")
    a = p.add_argument_group("architecture, patches and data")
    a.add_argument("--demod", choices=("standard", "input_scaling"), default="standard", help="modulated-conv flavour")
    a.add_argument("--normalize-codes", action=BooleanOptionalAction, default=True, help="L2-normalise content and style codes")
    a.add_argument("--style-gain", type=V.positive, default=None,
                   help="factor on the normalised style code before the generator's affines (default 1, the official "
                        "SwapAE scale; sqrt(style_dim) gives the affines unit-variance inputs)")
    a.add_argument("--content-channels", type=V.count, default=None,
                   help="channels of the content code (default: the preset's, 8; fewer keep colour out of it)")
    a.add_argument("--n-crop", type=V.count, default=None, help="query patches per image (default: the preset's)")
    a.add_argument("--n-ref", type=V.count, default=None, help="reference patches per image (default: the preset's)")
    a.add_argument("--patch-scale", type=V.Pair(V.Number(float, 1e-3, 1), labels=('LOW', 'HIGH')), default=(1 / 8, 1 / 4), help="LOW,HIGH patch side as a fraction of the image side")
    a.add_argument("--crop-scale", type=V.Pair(V.Number(float, 1e-3, 1), labels=('LOW', 'HIGH')), default=(0.6, 1.0), help="LOW,HIGH random crop side as a fraction of the shorter side")
    a.add_argument("--load-size", type=V.side, default=None, help="images are kept in memory with this shorter side (default: 2x resolution)")
    a.add_argument("--ema-half-life", type=V.non_negative, default=None, help="EMA half-life in images (default: the preset's)")
    b = p.add_argument_group("run")
    b.add_argument("--seed", type=int, default=0, help="random seed")
    b.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")
    b.add_argument("--threads", type=V.Number(int, 1, 1024), default=None, help="CPU threads for torch (default: torch's choice)")
    b.add_argument("--sample-every", type=V.non_negative_int, default=250, help="write a sample grid every N iterations (0 = only at the end)")
    b.add_argument("--checkpoint-every", type=V.non_negative_int, default=250, help="write a checkpoint every N iterations (0 = only at the end)")
    b.add_argument("--keep-checkpoints", type=V.non_negative_int, default=2, help="how many recent checkpoints to keep")
    b.add_argument("--progress", action=BooleanOptionalAction, default=True, help="show a progress bar")
    p.set_defaults(func=run_train)


# --------------------------------------------------------------------------------------------- runs


def _stylizer(args):
    from ..region.inference import RegionStylizer
    from ..runtime import resolve_device, resolve_dtype
    from .common import cached_model

    dtype = resolve_dtype(args.dtype, args.device)
    return cached_model(("RegionStylizer", args.model, args.device, args.dtype),
                        lambda: RegionStylizer.from_pretrained(args.model, torch_dtype=dtype).to(resolve_device(args.device)))


def run_apply(args) -> int:
    from ..errors import InputError
    from ..io import check_output_path, load_image, make_strip, save_image, sibling_path

    inputs = [args.content, *args.style, *(args.mask or [])]
    out = check_output_path(args.output, overwrite=args.overwrite, inputs=inputs)
    strip_path = sibling_path(out, "strip")
    if args.save_strip:
        check_output_path(strip_path, overwrite=args.overwrite, inputs=inputs)
    if args.mask and len(args.mask) != len(args.style):
        raise InputError(f"got {len(args.style)} --style but {len(args.mask)} --mask; give one mask per style, or none")
    lift_metadata = _lift_metadata(args)  # checks the lift settings before the model is loaded
    stylizer = _stylizer(args)
    result = stylizer(
        args.content, style=args.style, mask=args.mask, strength=args.strength, paste_back=args.paste_back,
        paste_margin=args.paste_margin, composition=args.composition, mask_resample=args.mask_resample,
        feather=args.feather, size=args.size, **_lift_kwargs(args),
    ).images[0]
    metadata = {
        "method": "region", "model": args.model or "bundled", "content": args.content, "style": args.style,
        "mask": args.mask, "strength": args.strength, "paste_back": args.paste_back,
        "paste_margin": stylizer.encoder.downsample_factor if args.paste_margin is None else args.paste_margin,
        "composition": args.composition,
        "mask_resample": args.mask_resample, "feather": args.feather, "size": args.size, "seed": args.seed,
        **lift_metadata, "width": result.width, "height": result.height,
    }
    save_image(result, out, metadata=metadata, overwrite=args.overwrite, inputs=inputs)
    print(f"wrote {out}")
    if args.save_strip:
        content = load_image(args.content, name="content image")
        panels = [content if args.output_size == "native" else stylizer.prepare_content(content, args.size)]
        for i, style in enumerate(args.style):
            panels.append(load_image(style))
            if args.mask:
                panels.append(load_image(args.mask[i], name="mask"))
        panels.append(result)
        # panels at least 512 px tall so the result can be judged, at most 768 to keep the strip a viewable file
        strip = make_strip(panels, height=max(STRIP_MIN_HEIGHT, min(result.height, STRIP_MAX_HEIGHT)))
        save_image(strip, strip_path, metadata=metadata, overwrite=args.overwrite, inputs=inputs)
        print(f"wrote {strip_path}")
    return 0


def run_interpolate(args) -> int:
    from PIL import Image

    from ..io import check_output_path, make_strip, save_image

    out = check_output_path(args.output, overwrite=args.overwrite, inputs=[args.source, args.target])
    lift_metadata = _lift_metadata(args)
    stylizer = _stylizer(args)
    alphas = [i / (args.steps - 1) for i in range(args.steps)]
    modes = ("content", "style", "both") if args.mode == "all" else (args.mode,)
    rows = []
    for m in modes:
        frames = stylizer.interpolate(args.source, args.target, alphas, what=m, size=args.size, **_lift_kwargs(args))
        # the grid is an overview: rows at most 1024 px tall even when the frames have a large photo's size
        rows.append(make_strip(frames, height=min(frames[0].height, 2 * STRIP_MIN_HEIGHT)))
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for row in rows:
        grid.paste(row, (0, y))
        y += row.height
    metadata = {"method": "region-interpolate", "model": args.model or "bundled", "source": args.source, "target": args.target,
                "rows": list(modes), "alphas": alphas, **lift_metadata}
    save_image(grid, out, metadata=metadata, overwrite=args.overwrite, inputs=[args.source, args.target])
    print(f"wrote {out} (rows: {', '.join(modes)}; alphas {', '.join(f'{a:.2f}' for a in alphas)})")
    return 0


def run_train(args) -> int:
    import torch

    from ..region.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        data=args.data, output=args.output, preset="test" if args.preset == "unit" else args.preset, iterations=args.iterations,
        batch_size=args.batch_size, lr=args.lr, w_rec=args.w_rec, w_gan=args.w_gan, w_cooccur=args.w_cooccur,
        w_cc=args.w_cc, cc_style_weight=args.cc_style_weight, w_ca=args.w_ca, r1_gamma=args.r1_gamma,
        r1_gamma_cooccur=args.r1_gamma_cooccur, r1_interval=args.r1_interval, reg_interval=args.reg_interval,
        reg_offset=args.reg_offset, reg_start=args.reg_start, reg_scale_by_interval=args.reg_scale_by_interval,
        cc_detach_targets=args.cc_detach_targets, ca_detach_target=args.ca_detach_target, ca_detach_input=args.ca_detach_input,
        ca_normalize_by_area=args.ca_normalize_by_area, adv_on_region=args.adv_on_region, mask_resample=args.mask_resample,
        mask_coverage=args.mask_coverage, mask_trivial_probability=args.mask_trivial_probability, n_crop=args.n_crop,
        n_ref=args.n_ref, patch_scale=args.patch_scale, demod=args.demod, normalize_codes=args.normalize_codes,
        style_gain=args.style_gain, content_channels=args.content_channels,
        crop_scale=args.crop_scale, load_size=args.load_size, ema_half_life_images=args.ema_half_life, seed=args.seed,
        sample_every=args.sample_every, checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        resume=args.resume, device=args.device, progress=args.progress,
        command="styleforge region train " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("train") + 1:])
        if "train" in sys.argv else None,
    )
    model = train(config)
    print(f"wrote the trained model to {model}")
    return 0
