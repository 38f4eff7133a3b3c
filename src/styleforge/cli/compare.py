"""``styleforge compare`` (run or collect several methods' outputs and write a report) and ``styleforge metrics``
(one metric on two images or two folders)."""

from __future__ import annotations

import argparse
from argparse import BooleanOptionalAction

from .. import validation as V
from .common import DEVICES, DTYPE_HELP, DTYPES, add_subcommand

METRIC_COMMANDS = ("lpips", "ssim", "psnr", "gram", "structure", "dreamsim", "identity", "fid", "artfid", "iou", "clip-score")


def _key_value(value: str) -> tuple[str, str]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    key, val = value.split("=", 1)
    if not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key.strip(), val


def _parse_value(text: str):
    """Option values: numbers and true/false are converted, anything else stays a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def register(sub) -> None:
    p = add_subcommand(
        sub, "compare", help="run several stylization methods on the same pairs and write a comparison report",
        description="Run the chosen methods on (content, reference) pairs with one seed policy (same inputs, same "
                    "resolution, same seed for every method), or collect folders of already made outputs, and write "
                    "OUT/grid.png (rows: pairs, columns: methods), OUT/report.md, OUT/report.html (images inline) and "
                    "OUT/metrics.json with the metrics whose weights are available.")
    p.add_argument("pairs", nargs="?", help="folder with content/ and reference/ (or style/) subfolders, or a list file "
                                            "with one 'content reference' pair per line")
    p.add_argument("-o", "--output", help="report folder")
    p.add_argument("--methods", default="", help="comma-separated registered methods to run (see --list-methods)")
    p.add_argument("--outputs", action="append", type=_key_value, default=[], metavar="NAME=FOLDER",
                   help="a column of already made outputs (one image per pair, named after the content file or the "
                        "pair index); repeatable")
    p.add_argument("--method-option", action="append", type=_key_value, default=[], metavar="METHOD.KEY=VALUE",
                   help="an option for one method, e.g. region.strength=0.5; repeatable")
    p.add_argument("--size", type=V.Number(int, 16, V.MAX_WORKING_SIDE, optional=True, what="a size in pixels"), default=None, help="one working resolution for all: every input is centre-cropped and resized to SIZE x SIZE (default: each method at its native size; metrics on 256x256 centre crops)")
    p.add_argument("--seed", type=int, default=0, help="seed given to every method")
    p.add_argument("--seed-policy", choices=("same", "per-pair"), default="same",
                   help="'same': SEED for every pair; 'per-pair': SEED + pair index (identical across methods either way)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated metrics (ssim,psnr,lpips,gram,structure,dreamsim,identity,fid,artfid) or 'none'; "
                        "default: ssim,psnr,lpips,gram,structure,dreamsim,artfid")
    p.add_argument("--weights", action="append", type=_key_value, default=[], metavar="KEY=SOURCE",
                   help="weights of a metric network: KEY is one of vgg19, alexnet, lpips-alex, dino-vitb8, dino-vitb16, "
                        "fid-inception, art-inception, arcface (SOURCE a file, a folder or a hub id), or dreamsim "
                        "(the unzipped dreamsim_checkpoint folder)")
    p.add_argument("--weights-dir", default=None, help="folder holding weight files under their standard names "
                                                          "(and/or an unzipped DreamSim checkpoint)")
    p.add_argument("--metric-nets", choices=("pretrained", "random"), default="pretrained",
                   help="'random' uses randomly initialised metric networks: a smoke test, the numbers mean nothing")
    p.add_argument("--list-methods", action="store_true", help="list the registered methods and exit")
    g = p.add_argument_group("options passed to every method")
    g.add_argument("--model", default=None, help="model of the methods (each method's default when omitted)")
    g.add_argument("--device", choices=DEVICES, default="auto", help="where to run")
    g.add_argument("--dtype", choices=DTYPES, default="auto", help=DTYPE_HELP)
    g.add_argument("--offline", action=BooleanOptionalAction, default=False, help="never contact the hub (also HF_HUB_OFFLINE=1)")
    g.add_argument("--overwrite", action=BooleanOptionalAction, default=False, help="replace an existing report and outputs")
    p.set_defaults(func=run)

    m = add_subcommand(
        sub, "metrics", help="compute one metric between two images or two folders of images",
        description="Compute a metric between A and B (images, or folders paired by sorted file name; set metrics "
                    "fid/artfid compare the folders as sets). Prints one value per pair and the mean.")
    m.add_argument("metric", choices=METRIC_COMMANDS, help="metric to compute")
    m.add_argument("a", help="first image or folder (content / input, or the set for fid)")
    m.add_argument("b", help="second image or folder (output)")
    m.add_argument("--reference", default=None, help="artfid: folder of style references (paired with B)")
    m.add_argument("--net", choices=("alex", "vgg"), default="alex", help="lpips backbone")
    m.add_argument("--mask", default=None, help="lpips: foreground mask (white); the distance is then background LPIPS")
    m.add_argument("--mask-mode", choices=("spatial", "masked"), default="spatial",
                   help="background LPIPS: average the spatial map over the background, or LPIPS of both images "
                        "multiplied by the background mask")
    m.add_argument("--text", default=None, help="clip-score: the prompt B is scored against")
    m.add_argument("--clip-model", default=None, help="clip-score: CLIP hub id or folder (default openai/clip-vit-large-patch14)")
    m.add_argument("--weights", action="append", type=_key_value, default=[], metavar="KEY=SOURCE",
                   help="weights of a metric network (as for compare)")
    m.add_argument("--weights-dir", default=None, help="folder holding weight files under their standard names")
    m.add_argument("--offline", action=BooleanOptionalAction, default=False, help="never contact the hub")
    m.set_defaults(func=run_metrics)


def _method_options(items) -> dict[str, dict]:
    from ..errors import InputError

    out: dict[str, dict] = {}
    for key, value in items:
        if "." not in key:
            raise InputError(f"--method-option needs METHOD.KEY=VALUE, got {key}={value}")
        method, opt = key.split(".", 1)
        out.setdefault(method, {})[opt] = _parse_value(value)
    return out


def _weights(args) -> dict:
    """Explicit --weights over the standard files found in --weights-dir."""
    from ..errors import InputError
    from ..metrics.weights import weights_in_folder

    found = {}
    if args.weights_dir:
        from pathlib import Path

        if not Path(args.weights_dir).is_dir():
            raise InputError(f"--weights-dir is not a folder: {args.weights_dir}")
        found = {k: str(v) for k, v in weights_in_folder(args.weights_dir).items()}
    return {**found, **dict(args.weights)}


def run(args) -> int:
    from ..compare import available_methods, compare
    from ..errors import InputError
    from ..metrics.suite import MetricSuite

    if args.list_methods:
        for name, method in available_methods().items():
            print(f"{name}\t{method.description}")
        return 0
    if not args.pairs or not args.output:
        raise InputError("compare needs PAIRS and -o/--output (or --list-methods)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    metrics = None
    if args.metrics is not None:
        metrics = [] if args.metrics.strip().lower() == "none" else [m.strip() for m in args.metrics.split(",") if m.strip()]
    shared = {"device": args.device, "dtype": args.dtype, "offline": args.offline or None}
    if args.model:
        shared["model"] = args.model
    suite = MetricSuite(mode=args.metric_nets, weights=_weights(args), offline=args.offline or None)
    report = compare(args.pairs, args.output, methods=methods, outputs=dict(args.outputs), seed=args.seed,
                     seed_policy=args.seed_policy, size=args.size, options=_method_options(args.method_option),
                     shared_options=shared, metrics=metrics, suite=suite, overwrite=args.overwrite)
    for kind in ("grid", "markdown", "html", "json"):
        print(f"wrote {report.files[kind]}")
    for metric, why in report.metric_notes.items():
        print(f"note: {metric} not computed: {why}")
    return 0


def _files(path: str) -> list:
    from pathlib import Path

    from ..compare import _images_in
    from ..errors import InputError

    p = Path(path)
    if p.is_dir():
        files = _images_in(p)
        if not files:
            raise InputError(f"no images in {p}")
        return files
    if not p.exists():
        raise InputError(f"image not found: {p}")
    return [p]


def run_metrics(args) -> int:
    import math

    from ..errors import InputError
    from ..metrics.suite import MetricSuite

    a, b = _files(args.a), _files(args.b)
    suite = MetricSuite(weights=_weights(args), offline=args.offline or None)
    name = args.metric
    if name in ("fid", "artfid"):
        from ..metrics import fid as F

        if name == "fid":
            net = suite.net("fid_inception")
            if net is None:
                raise _missing(suite, "fid_inception")
            print(f"fid\t{F.fid(a, b, net=net, progress=True):.4f}\t(n={len(a)} vs {len(b)})")
        else:
            if not args.reference:
                raise InputError("artfid needs --reference (the style images paired with B)")
            inception, lp = suite.net("art_inception"), suite.net("lpips_alex")
            if inception is None or lp is None:
                raise _missing(suite, "art_inception" if inception is None else "lpips_alex")
            r = F.art_fid(b, _files(args.reference), a, inception=inception, lpips=lp, progress=True)
            print(f"artfid\t{r['art_fid']:.4f}\t(fid {r['fid']:.4f}, content lpips {r['content_lpips']:.4f}, n={r['n']})")
        return 0
    if len(a) != len(b):
        raise InputError(f"{args.a} has {len(a)} images and {args.b} has {len(b)}; pairs need equal numbers")
    values = []
    for x, y in zip(a, b):
        v = _pair_metric(name, x, y, args, suite)
        values.append(v)
        print(f"{name}\t{v:.6g}\t{x}\t{y}")
    finite = [v for v in values if not math.isnan(v)]
    if len(values) > 1:
        print(f"{name}\tmean\t{(sum(finite) / len(finite)) if finite else float('nan'):.6g}\t(n={len(finite)})")
    return 0


def _missing(suite, key):
    from ..errors import ModelNotFoundError

    return ModelNotFoundError(suite.unavailable.get(key, f"{key} weights are not available"))


def _pair_metric(name, x, y, args, suite) -> float:
    from ..errors import InputError
    from ..metrics import iou, pixel

    if name == "ssim":
        return float(pixel.ssim(x, y)[0])
    if name == "psnr":
        return float(pixel.psnr(x, y)[0])
    if name == "iou":
        return iou.mask_iou(x, y)
    if name == "clip-score":
        from ..metrics.clip import DEFAULT_CLIP_MODEL, clip_score, load_clip

        if not args.text:
            raise InputError("clip-score needs --text (the prompt the image B is scored against)")
        model, tok = suite.nets.get("clip") or load_clip(args.clip_model or DEFAULT_CLIP_MODEL, offline=args.offline or None)
        suite.nets["clip"] = (model, tok)
        return float(clip_score(model, tok, y, args.text)[0])
    if name == "lpips":
        from ..metrics.lpips import LPIPS, background_lpips, lpips_distance

        key = f"lpips_{args.net}"
        if key not in suite.nets:
            w = suite.weights.get
            suite.nets[key] = LPIPS.from_pretrained(args.net, backbone_weights=w("alexnet" if args.net == "alex" else "vgg16"),
                                                    heads_weights=w(f"lpips-{args.net}"), offline=suite.offline)
        if args.mask:
            return float(background_lpips(x, y, args.mask, net=suite.nets[key], mode=args.mask_mode)[0])
        return float(lpips_distance(x, y, net=suite.nets[key])[0])
    net_key = {"gram": "vgg19", "structure": "dino_vitb8", "dreamsim": "dreamsim", "identity": "arcface"}[name]
    if suite.net(net_key) is None:
        raise _missing(suite, net_key)
    import torch

    from ..metrics.images import pair

    xt, yt = pair(x, y)
    # compare()'s roles: gram and dreamsim take (reference, output); the rest (content, output)
    dummy = torch.zeros_like(xt)
    if name in ("gram", "dreamsim"):
        return suite.per_pair(name, dummy, xt, yt)[0]
    return suite.per_pair(name, xt, dummy, yt)[0]
