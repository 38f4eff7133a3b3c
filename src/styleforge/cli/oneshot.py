"""``styleforge oneshot``: OSASIS one-shot stylization (prepare / train / apply / align)."""

from __future__ import annotations

from argparse import BooleanOptionalAction
from .. import validation as V
from .common import add_common_args, add_memory_args, add_subcommand, dataclass_defaults, memory_options, memory_savers

DEFAULT_DIFFAE = "checkpoints/ffhq256_autoenc/last.ckpt"
DEFAULT_LATENT = "checkpoints/ffhq256_autoenc_latent/last.ckpt"
DEFAULT_P2 = "checkpoints/ffhq_p2.pt"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
WHERE = {
    "DiffAE": "the DiffAE release (Google Drive folder 1-5zfxT6Gl-GjxM7z9ZO2AHlB70tfmF6V: ffhq256_autoenc/last.ckpt)",
    "latent": "the DiffAE release (Google Drive folder 1-H8WzKc65dEONN-DQ87TnXc23nTXDTYb: ffhq256_autoenc_latent/last.ckpt)",
    "P2": "the OSASIS README (Google Drive file 14ACthNkradJWBAL0th6z0UguzR6QjFKH: ffhq_p2.pt)",
}


def register(sub) -> None:
    p = add_subcommand(sub, "oneshot", help="OSASIS: train a style from one artwork, then stylize photos keeping their structure",
                       description="One-shot structure-aware stylization on a diffusion autoencoder (Cho et al., CVPR 2024). "
                                   "prepare (stage 0) -> train (stage 1) -> apply (stage 2).")
    steps = p.add_subparsers(dest="oneshot_command", metavar="STEP", title="steps")
    _register_prepare(steps)
    _register_train(steps)
    _register_apply(steps)
    _register_align(steps)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


# ------------------------------------------------------------------------------------------------ prepare


def _register_prepare(steps) -> None:
    p = add_subcommand(steps, "prepare", help="stage 0: make the photo-like counterpart of the artwork (P2 DDPM, SDEdit)")
    p.add_argument("--style", required=True, help="the artwork")
    g = p.add_argument_group("method")
    g.add_argument("--num-candidates", type=V.count, default=30, help="SDEdit candidates (paper 30; official script 1)")
    g.add_argument("--steps", type=V.steps, default=50, help="fractional respacing of the DDPM")
    g.add_argument("--t0-ratio", type=V.open_fraction, default=0.5, help="noise level as a fraction of the grid")
    g.add_argument("--plan", choices=("official", "consistent"), default="official", help="official denoises from one index below the noised one")
    g.add_argument("--l1-weight", type=V.non_negative, default=10.0, help="selection score: weight of mean |x - style|")
    g.add_argument("--lpips-weight", type=V.non_negative, default=1.0, help="selection score: weight of LPIPS-VGG (0 skips loading it)")
    g.add_argument("--batch-size", type=V.count, default=8, help="candidates per DDPM batch")
    g.add_argument("--clamp", action=BooleanOptionalAction, default=True, help="clip x0 to [-1, 1] at every step")
    g.add_argument("--save-candidates", action=BooleanOptionalAction, default=False, help="also write every candidate to run/candidates/")
    _lpips_args(p)
    add_common_args(p, model_default=DEFAULT_P2, model_help="P2-weighting FFHQ DDPM: ffhq_p2.pt or a saved ADMUNet folder",
                    output_help="run folder", seed_default=1)
    p.set_defaults(func=run_prepare)


def _lpips_args(p) -> None:
    g = p.add_argument_group("LPIPS-VGG")
    g.add_argument("--lpips-backbone", default=None, help="local VGG16 weights file (default: the published file)")
    g.add_argument("--lpips-heads", default=None, help="local lpips vgg.pth heads file (default: the published file)")


def _lpips(args, weight: float):
    if not weight:
        return None
    from ..metrics.lpips import LPIPS

    return LPIPS.from_pretrained("vgg", backbone_weights=args.lpips_backbone, heads_weights=args.lpips_heads,
                                 offline=args.offline or None)


def _load(cls, path, what: str, **kw):
    from pathlib import Path

    from ..errors import ModelNotFoundError
    from ..osasis.models import load_model

    if not Path(path).exists():
        raise ModelNotFoundError(f"{what} weights not found at {path}; get them from {WHERE[what]} or pass the path")
    return load_model(cls, path, **kw)


def _device_dtype(args, train: bool = False):
    from ..errors import InputError
    from ..runtime import resolve_device, resolve_dtype

    dtype = resolve_dtype(args.dtype, args.device)
    if train and str(dtype) != "torch.float32":
        raise InputError("training runs in fp32 (Adam updates at lr 5e-6 vanish in half precision)")
    return resolve_device(args.device), dtype


def _style_tensor(path, size: int):
    from ..io import load_image, pil_to_tensor
    from ..osasis.pipeline import resize_square

    return pil_to_tensor(resize_square(load_image(path, name="style image"), size))


def run_prepare(args) -> int:
    import json
    from pathlib import Path

    from ..io import check_output_path, save_image, tensor_to_pil
    from ..osasis.models import ADMUNet
    from ..osasis.prepare import PrepareSettings, prepare_style_photo

    run = Path(args.output)
    outs = {k: check_output_path(run / f"{k}.png", overwrite=args.overwrite, inputs=[args.style]) for k in ("style", "style_photo")}
    settings = PrepareSettings(num_candidates=args.num_candidates, steps=args.steps, t0_ratio=args.t0_ratio, plan=args.plan,
                               l1_weight=args.l1_weight, lpips_weight=args.lpips_weight, seed=args.seed,
                               batch_size=args.batch_size, clamp=args.clamp)
    device, dtype = _device_dtype(args)
    ddpm = _load(ADMUNet, args.model, "P2").to(device, dtype)
    perceptual = _lpips(args, args.lpips_weight)
    if perceptual is not None:
        perceptual.to(device)
    style = _style_tensor(args.style, ddpm.config.image_size).to(device, dtype)
    from tqdm.auto import tqdm

    best, cands, scores = prepare_style_photo(ddpm, style, perceptual, settings, progress=lambda it: tqdm(it, desc="stage 0", leave=False))
    meta = {"method": "osasis-prepare", "style": str(args.style), "model": str(args.model), **settings.to_dict(),
            "scores": [round(float(s), 6) for s in scores], "selected": int(scores.argmin())}
    save_image(tensor_to_pil(style.float())[0], outs["style"], metadata=meta, overwrite=args.overwrite, inputs=[args.style])
    print(f"wrote {save_image(tensor_to_pil(best.float())[0], outs['style_photo'], metadata=meta, overwrite=args.overwrite)}")
    if args.save_candidates:
        for i, img in enumerate(tensor_to_pil(cands.float())):
            save_image(img, run / "candidates" / f"candidate_{i:03d}.png", metadata={**meta, "index": i}, overwrite=True)
    from ..io import atomic_write

    with atomic_write(run / "prepare.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------ train


def _register_train(steps) -> None:
    from ..osasis.config import TrainConfig

    d = dataclass_defaults(TrainConfig)
    p = add_subcommand(steps, "train", help="stage 1: fine-tune the style denoiser and the SPN on one artwork")
    p.add_argument("--style", required=True, help="the artwork I_B^style")
    p.add_argument("--style-photo", default=None, help="its photo-like counterpart I_A^style (default: RUN/style_photo.png from prepare)")
    g = p.add_argument_group("models")
    g.add_argument("--latent", default=DEFAULT_LATENT, help="DiffAE latent DDIM: official ffhq256_autoenc_latent/last.ckpt or a saved folder")
    g.add_argument("--latent-stats", default=None, help="latent.pkl with conds_mean/conds_std when the latent checkpoint lacks them")
    g.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP ViT-B/32 (hub id or local transformers folder)")
    g.add_argument("--clip-preprocess", choices=("official", "proper"), default="official", help="nearest resize, no normalisation (official) or bicubic + CLIP mean/std")
    _lpips_args(p)
    g = p.add_argument_group("schedule")
    g.add_argument("--iterations", type=V.count, default=d.iterations, help="training iterations (each = one update per decode step)")
    g.add_argument("--batch-size", type=V.count, default=d.batch_size, help="synthetic content faces per iteration")
    g.add_argument("--lr", type=V.positive, default=d.lr, help="Adam learning rate of eps_B")
    g.add_argument("--spn-lr", type=V.positive, default=d.spn_lr, help="Adam learning rate of the SPN")
    g.add_argument("--t0-ratio", type=V.open_fraction, default=d.t0_ratio, help="encoding depth t0 / T")
    g.add_argument("--encode-steps", type=V.steps, default=d.encode_steps, help="DDIM grid for encoding (T_train_for)")
    g.add_argument("--decode-steps", type=V.steps, default=d.decode_steps, help="DDIM grid for decoding (T_train_back)")
    g.add_argument("--plan", choices=("official", "consistent"), default=d.plan,
                   help="decode from one stride below t0 (official, the released recipe) or from t0 itself (ours)")
    g.add_argument("--latent-steps", type=V.steps, default=d.latent_steps, help="latent DDIM steps for sampling content codes")
    g.add_argument("--content-steps", type=V.steps, default=d.content_steps, help="DDIM steps for generating content faces")
    g.add_argument("--clamp", action=BooleanOptionalAction, default=d.clamp, help="clip x0 to [-1, 1]")
    g.add_argument("--dropout", action=BooleanOptionalAction, default=d.dropout, help="keep eps_B's dropout active while training (official)")
    g.add_argument("--autocast", choices=("off", "bf16", "fp16"), default="off", help="run eps_B/SPN forward passes under autocast (GPU speed); weights stay fp32")
    g = p.add_argument_group("SPN")
    g.add_argument("--spn", choices=("time", "plain", "none"), default=d.spn, help="time-conditioned SPN (official), time-free, or none")
    g.add_argument("--spn-time-input", choices=("grid_index", "timestep"), default=d.spn_time_input,
                   help="the SPN's time input: the decode grid index (official) or the timestep (ours, grid-independent)")
    g.add_argument("--spn-weight", type=V.non_negative, default=d.spn_weight, help="lambda_SPN of the content branch")
    g.add_argument("--style-spn-weight", type=V.non_negative, default=d.style_spn_weight, help="SPN weight of the style branch (official 1.0; paper: lambda)")
    g.add_argument("--zero-init-spn", action=BooleanOptionalAction, default=False, help="zero the SPN's output conv (start from plain DiffAE)")
    g = p.add_argument_group("losses (Eq. 26)")
    g.add_argument("--cross-weight", type=V.non_negative, default=d.weights.cross, help="cross-domain directional loss")
    g.add_argument("--in-weight", type=V.non_negative, default=d.weights.in_domain, help="in-domain directional loss")
    g.add_argument("--l1-weight", type=V.non_negative, default=d.weights.recon_l1, help="reconstruction L1")
    g.add_argument("--lpips-weight", type=V.non_negative, default=d.weights.recon_lpips, help="reconstruction LPIPS-VGG (0 skips loading it)")
    g.add_argument("--clip-weight", type=V.non_negative, default=d.weights.recon_clip, help="reconstruction CLIP")
    g.add_argument("--clip-recon", choices=("cosine", "l1"), default=d.clip_recon, help="1 - cos (official) or the paper's L1 norm")
    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpoint-every", type=V.non_negative_int, default=d.checkpoint_every, help="iterations between checkpoints (0: only at the end)")
    g.add_argument("--sample-every", type=V.non_negative_int, default=d.sample_every, help="iterations between sample strips (0: never)")
    g.add_argument("--keep-checkpoints", type=V.non_negative_int, default=d.keep_checkpoints, help="newest checkpoints kept (0: all)")
    g.add_argument("--resume", nargs="?", const=True, default=False, help="continue from the latest checkpoint in RUN/ckpt (or the given file)")
    g.add_argument("--stop-after", type=V.count, default=None, help="stop this call after N iterations (checkpointing first)")
    g.add_argument("--progress", action=BooleanOptionalAction, default=True, help="show a progress bar")
    add_memory_args(p, offload=None, vae=False, checkpointing="recompute eps_B activations in backward (exact; less memory, more time)")
    add_common_args(p, model_default=DEFAULT_DIFFAE, model_help="DiffAE FFHQ-256 autoencoder: official last.ckpt or a saved folder",
                    output_help="run folder (from prepare)", dtype_default="fp32")
    p.set_defaults(func=run_train)


def _clip(name: str, offline, preprocess: str, need_tokenizer: bool):
    from transformers import CLIPModel

    from ..errors import ModelNotFoundError
    from ..loading import local_files_only, unavailable_reason
    from ..osasis.losses import CLIPEmbedder

    local_only = local_files_only(offline)
    try:
        model = CLIPModel.from_pretrained(name, local_files_only=local_only)
    except Exception as e:
        raise ModelNotFoundError(f"CLIP model {name!r} is not available ({unavailable_reason(e, offline)}); download it with "
                                 f"`hf download {name}` or pass --clip /local/folder") from None
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    except Exception:
        if need_tokenizer:
            raise ModelNotFoundError(f"CLIP model {name!r} has no tokenizer; text-driven manipulation needs one") from None
    return CLIPEmbedder(model, tokenizer, preprocess=preprocess)


def run_train(args) -> int:
    from pathlib import Path

    from ..errors import InputError
    from ..io import save_image, tensor_to_pil
    from ..osasis.losses import LossWeights
    from ..osasis.models import DiffAEAutoencoder, LatentDDIMNet
    from ..osasis.config import TrainConfig

    run = Path(args.output)
    config = TrainConfig(
        iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, spn_lr=args.spn_lr, t0_ratio=args.t0_ratio,
        encode_steps=args.encode_steps, decode_steps=args.decode_steps, plan=args.plan, spn=args.spn,
        spn_time_input=args.spn_time_input, spn_weight=args.spn_weight, style_spn_weight=args.style_spn_weight,
        zero_init_spn=args.zero_init_spn, latent_steps=args.latent_steps, content_steps=args.content_steps,
        clamp=args.clamp, dropout=args.dropout, clip_recon=args.clip_recon, seed=args.seed,
        autocast=None if args.autocast == "off" else args.autocast,
        gradient_checkpointing=memory_savers(args).gradient_checkpointing,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, keep_checkpoints=args.keep_checkpoints,
        weights=LossWeights(cross=args.cross_weight, in_domain=args.in_weight, recon_l1=args.l1_weight,
                            recon_lpips=args.lpips_weight, recon_clip=args.clip_weight))
    style_photo = Path(args.style_photo) if args.style_photo else run / "style_photo.png"
    if not style_photo.exists():
        raise InputError(f"no photo counterpart at {style_photo}: run `styleforge oneshot prepare --style {args.style} -o {run}` "
                         "first, or pass --style-photo")
    if (run / "osasis.json").exists() and not args.resume and not args.overwrite:
        from ..errors import OutputError

        raise OutputError(f"{run} already holds a trained model (pass --overwrite to train again, or use a new folder)")
    device, dtype = _device_dtype(args, train=True)
    unet_a = _load(DiffAEAutoencoder, args.model, "DiffAE").to(device)
    latent = _load(LatentDDIMNet, args.latent, "latent", latent_stats=args.latent_stats).to(device)
    size = unet_a.config.image_size
    style, photo = _style_tensor(args.style, size), _style_tensor(style_photo, size)
    run_style = run / "style.png"  # the run keeps the artwork it was trained on (apply reads it)
    if run_style.exists() and not run_style.samefile(args.style):
        if not args.overwrite and (_style_tensor(run_style, size) - style).abs().max() > 1 / 127.5:
            raise InputError(f"{run_style} (from prepare) is not the --style artwork; use the same artwork or --overwrite")
    new_style = not run_style.exists()
    try:
        if new_style or (args.overwrite and not run_style.samefile(args.style)):
            save_image(tensor_to_pil(style)[0], run_style, overwrite=True, inputs=[args.style])
        _train(args, run, config, unet_a, latent, style, photo, device)
    except BaseException:
        if new_style and not any((run / "ckpt").glob("iter_*.pt")):  # a failed first run leaves no style.png behind
            run_style.unlink(missing_ok=True)
        raise
    return 0


def _train(args, run, config, unet_a, latent, style, photo, device) -> None:
    from pathlib import Path

    from ..osasis.train import OSASISTrainer

    embed = _clip(args.clip, args.offline or None, args.clip_preprocess, need_tokenizer=False).to(device)
    perceptual = _lpips(args, args.lpips_weight)
    if perceptual is not None:
        perceptual.to(device)
    trainer = OSASISTrainer(config, unet_a, latent, embed, perceptual, style, photo, run,
                            run_metadata={"diffae": str(Path(args.model).resolve()), "style_image": "style.png",
                                          "clip": args.clip, "source_style": str(args.style)})
    if args.overwrite and not args.resume:
        for old in (run / "ckpt").glob("iter_*.pt"):
            old.unlink()
    trainer.train(resume=args.resume, progress=args.progress, stop_after=args.stop_after)
    if trainer.iteration >= config.iterations:
        print(f"wrote {run / 'model'} (iteration {trainer.iteration})")
    else:
        print(f"stopped at iteration {trainer.iteration}; continue with --resume")


# ------------------------------------------------------------------------------------------------ apply


def _register_apply(steps) -> None:
    p = add_subcommand(steps, "apply", help="stage 2: stylize photos with a trained style")
    p.add_argument("--run", default=None, help="run folder written by `oneshot train`")
    p.add_argument("--checkpoint", default=None, help="an official OSASIS checkpoint (exp/imgN/ckpt/iter_200.pt) instead of --run")
    p.add_argument("--style", default=None, help="the artwork (default: the run's style.png; required with --checkpoint)")
    p.add_argument("--input", required=True, help="a photo or a folder of photos (FFHQ-aligned faces for the FFHQ model)")
    g = p.add_argument_group("method")
    g.add_argument("--t0-ratio", type=V.open_fraction, default=0.5, help="encoding depth t0 / T (larger: more style, less structure)")
    g.add_argument("--encode-steps", type=V.steps, default=100, help="DDIM grid for encoding (T_infer_for)")
    g.add_argument("--decode-steps", type=V.steps, default=50, help="DDIM grid for decoding (T_infer_back)")
    g.add_argument("--plan", choices=("official", "consistent"), default=None, help="timestep plan (default: the run's training plan; official for --checkpoint)")
    g.add_argument("--spn-weight", type=V.non_negative, default=0.1, help="lambda_SPN (larger: more structure)")
    g.add_argument("--split-resolution", type=V.count, default=32, help="f_ch: levels at this resolution or finer take the style code")
    g.add_argument("--swap-codes", action=BooleanOptionalAction, default=False, help="opposite assignment (paper Fig. 8 ablation)")
    g.add_argument("--style-middle", action=BooleanOptionalAction, default=False, help="also give the middle block the style code (not official)")
    g.add_argument("--clamp", action=BooleanOptionalAction, default=True, help="clip x0 to [-1, 1]")
    g.add_argument("--batch-size", type=V.count, default=64, help="photos per batch")
    g = p.add_argument_group("text-driven manipulation")
    g.add_argument("--edit-source", default=None, help="source text, e.g. 'face'")
    g.add_argument("--edit-target", default=None, help="target text, e.g. 'smiling face'")
    g.add_argument("--edit-iterations", type=V.count, default=50, help="Adam steps on the semantic code (our choice)")
    g.add_argument("--edit-lr", type=V.positive, default=0.01, help="Adam learning rate (our choice)")
    g.add_argument("--edit-l2", type=V.non_negative, default=0.0, help="pull toward the original code (our choice)")
    g.add_argument("--edit-space", choices=("normalized", "raw"), default="normalized", help="optimise DiffAE-normalised codes (needs --latent) or raw ones")
    g.add_argument("--latent", default=DEFAULT_LATENT, help="latent checkpoint/folder (its code statistics, for --edit-space normalized)")
    g.add_argument("--latent-stats", default=None, help="latent.pkl with the code statistics")
    g.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP for the manipulation")
    g.add_argument("--clip-preprocess", choices=("official", "proper"), default="proper",
                   help="CLIP input preprocessing of the text edit: bicubic + CLIP mean/std (proper; text directions need "
                        "normalised inputs) or the official image-loss preprocessing (nearest resize, no normalisation)")
    add_memory_args(p, vae=False, checkpointing="recompute eps_B activations in the manipulation's backward (exact; less memory)")
    add_common_args(p, model_default=None, model_help="DiffAE autoencoder (default: the one the run was trained from)",
                    output_help="output folder")
    p.set_defaults(func=run_apply)


def run_apply(args) -> int:
    import json
    from pathlib import Path

    from ..errors import InputError
    from ..io import check_output_path, save_image
    from ..osasis.models import LatentDDIMNet
    from ..osasis.pipeline import EditSettings, OSASISPipeline, StylizeSettings, list_inputs
    from .common import cached_model

    if (args.run is None) == (args.checkpoint is None):
        raise InputError("give exactly one of --run (a trained folder) or --checkpoint (an official iter_*.pt)")
    inputs = list_inputs(args.input)
    out_dir = Path(args.output)
    planned = [check_output_path(out_dir / f"{p.stem}.png", overwrite=args.overwrite, inputs=[p]) for p in inputs]
    if len(set(planned)) != len(planned):
        raise InputError("two inputs share a file stem; their outputs would collide")
    device, dtype = _device_dtype(args)
    savers = memory_savers(args)
    load_device = "cpu" if savers.offload != "none" else device  # offload hooks move the weights themselves
    if args.run:
        pipe = cached_model(("OSASIS-run", args.run, args.model, str(device), args.dtype, savers),
                            lambda: OSASISPipeline.from_pretrained(args.run, diffae=args.model).to(load_device))
        meta = json.loads((Path(args.run) / "osasis.json").read_text())  # loading has refused a damaged one
        plan = args.plan or meta.get("train", {}).get("plan", "official")
    else:
        if not args.style or not args.model:
            raise InputError("--checkpoint needs --style (the artwork it was trained on) and --model (the DiffAE checkpoint)")
        pipe = cached_model(("OSASIS-official", args.checkpoint, args.model, args.style, str(device), args.dtype, savers),
                            lambda: OSASISPipeline.from_official(args.checkpoint, diffae=args.model,
                                                                 style_image=args.style).to(load_device))
        plan = args.plan or "official"
    style = args.style or pipe.style_image
    settings = StylizeSettings(t0_ratio=args.t0_ratio, encode_steps=args.encode_steps, decode_steps=args.decode_steps,
                               plan=plan, spn_weight=args.spn_weight, split_resolution=args.split_resolution,
                               swap_codes=args.swap_codes, style_middle=args.style_middle, clamp=args.clamp,
                               batch_size=args.batch_size)
    settings.timestep_plan().decode_transitions()  # validate before any work
    edit = None
    if args.edit_source or args.edit_target:
        pipe.clip = _clip(args.clip, args.offline or None, args.clip_preprocess, need_tokenizer=True).to(device)
        if args.edit_space == "normalized":
            pipe.latent_net = _load(LatentDDIMNet, args.latent, "latent", latent_stats=args.latent_stats).to(device)
        edit = EditSettings(iterations=args.edit_iterations, lr=args.edit_lr, l2_weight=args.edit_l2, code_space=args.edit_space)
    if dtype != pipe.unet_a.dtype:
        for m in (pipe.unet_a, pipe.unet_b, pipe.spn):
            if m is not None:
                m.to(dtype)
    pipe.enable_memory_savers(**memory_options(args), device=device)
    from tqdm.auto import tqdm

    images = pipe([str(p) for p in inputs], style, settings, edit_source=args.edit_source, edit_target=args.edit_target,
                  edit=edit, progress=lambda it: tqdm(it, leave=False)).images
    meta = {"method": "osasis", "run": args.run, "checkpoint": args.checkpoint, "style": str(style),
            "edit_source": args.edit_source, "edit_target": args.edit_target, **settings.__dict__}
    for src, img, path in zip(inputs, images, planned):
        print(f"wrote {save_image(img, path, metadata={**meta, 'input': str(src)}, overwrite=args.overwrite, inputs=[src])}")
    return 0


# ------------------------------------------------------------------------------------------------ align


def _register_align(steps) -> None:
    p = add_subcommand(steps, "align", help="FFHQ-style face alignment from 68 landmarks (a separate, optional step)")
    p.add_argument("--input", required=True, help="a face photo")
    p.add_argument("--landmarks", required=True, help="text/JSON file with 68 (x, y) landmarks (dlib order)")
    p.add_argument("--size", type=V.side, default=256, help="output size")
    p.add_argument("-o", "--output", required=True, help="output PNG")
    p.add_argument("--overwrite", action=BooleanOptionalAction, default=False, help="replace an existing output")
    p.set_defaults(func=run_align)


def run_align(args) -> int:
    from ..io import check_output_path, load_image, save_image
    from ..osasis.align import align_face, read_landmarks

    out = check_output_path(args.output, overwrite=args.overwrite, inputs=[args.input])
    img = align_face(load_image(args.input), read_landmarks(args.landmarks), output_size=args.size)
    print(f"wrote {save_image(img, out, metadata={'method': 'ffhq-align', 'input': str(args.input)}, overwrite=args.overwrite, inputs=[args.input])}")
    return 0


