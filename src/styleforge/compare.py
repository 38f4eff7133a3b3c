"""Side-by-side comparison of stylization methods: run them on the same inputs, or collect their outputs, and
write a report (an image grid, a metrics table, as Markdown and as a self-contained HTML page).

One seed policy for every method: every input is saved once under ``OUT/inputs/`` (as it is, or centre-cropped
and resized to ``size`` x ``size`` when a ``size`` is given); every method gets those same files, the same
``size`` (None: each method works at its own native size) and the same seed (``seed`` for every pair, or
``seed + pair index`` with ``seed_policy="per-pair"``). Metrics compare centre crops at ``metric_size``.

Methods are looked up in a registry: a name -> a function
``(content_path, reference_path, out_path, seed, size, options) -> None`` that writes one PNG to ``out_path``.
``options`` is a dict (shared ``model`` / ``device`` / ``dtype`` / ``offline`` plus the method's own options).
Register more with :func:`register_method`.

Layout of ``OUT``: ``inputs/``, ``outputs/<method>/``, ``grid.png``, ``report.md``, ``report.html``,
``metrics.json``.
"""

from __future__ import annotations

import base64
import html
import io as _io
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .errors import InputError, OutputError, StyleforgeError

MethodFn = Callable[[Path, Path, Path, int, int, dict], None]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
REPORT_FILES = ("grid.png", "report.md", "report.html", "metrics.json")
CONTENT_DIRS = ("content", "contents")
REFERENCE_DIRS = ("reference", "references", "style", "styles")
SEED_POLICIES = ("same", "per-pair")
GRID_GAP = 2  # white pixels between grid cells


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Method:
    name: str
    run: MethodFn
    description: str = ""
    options: tuple[str, ...] | None = None  # the method's own option names (None: not declared, anything goes)


_REGISTRY: dict[str, Method] = {}
#: options every method takes (also per method, e.g. region.model=FOLDER)
SHARED_OPTIONS = ("model", "device", "dtype", "offline")


def register_method(name: str, fn: MethodFn | None = None, *, description: str = "", replace: bool = False,
                    options: Sequence[str] | None = None):
    """Register ``fn`` under ``name`` (usable as a decorator: ``@register_method("mine")``)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"method names are letters, digits, '_', '-', '.': {name!r}")

    def add(f: MethodFn) -> MethodFn:
        if name in _REGISTRY and not replace:
            raise ValueError(f"a method named {name!r} is already registered (pass replace=True)")
        _REGISTRY[name] = Method(name, f, description or (f.__doc__ or "").strip().split("\n")[0],
                                 None if options is None else tuple(options))
        return f

    return add(fn) if fn is not None else add


def unregister_method(name: str) -> None:
    _REGISTRY.pop(name, None)


def available_methods() -> dict[str, Method]:
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name]


_REGION_CACHE: dict = {}


def run_region(content: Path, reference: Path, out: Path, seed: int, size: int, options: dict) -> None:
    """Region-wise stylizer (TCP), global transfer (or the region under option ``mask``); deterministic.

    The model works at its training size and its edit is lifted onto the input as given (``size`` x ``size`` when
    compare was given one; guided
    lift, as ``styleforge region apply``); options ``detail``, ``lift_radius``, ``lift_eps``, ``lift_sigma``,
    ``lift_prior``, ``working_size`` (the model's working resolution) and ``paste_back`` change that."""
    from .io import save_image
    from .region.inference import RegionStylizer, lift_settings
    from .region.lift_settings import DEFAULT_EPS, DEFAULT_RADIUS, DEFAULT_SIGMA
    from .runtime import resolve_device

    key = (str(options.get("model")), str(options.get("device", "auto")), str(options.get("dtype", "fp32")))
    if key not in _REGION_CACHE:
        _REGION_CACHE[key] = RegionStylizer.from_pretrained(options.get("model"), torch_dtype=options.get("dtype", "fp32")
                                                            ).to(resolve_device(options.get("device", "auto")))
    stylizer = _REGION_CACHE[key]
    settings = lift_settings("native", options.get("detail", "guided"), _number(options.get("lift_radius", DEFAULT_RADIUS)),
                             float(options.get("lift_eps", DEFAULT_EPS)), options.get("lift_prior", "global"),
                             float(options.get("lift_sigma", DEFAULT_SIGMA)))
    working = options.get("working_size")
    paste_back = options.get("paste_back", True)
    if isinstance(paste_back, str):
        from .cli.common import str2bool

        paste_back = str2bool(paste_back)
    image = stylizer(content, style=reference, mask=options.get("mask"), strength=float(options.get("strength", 1.0)),
                     paste_back=bool(paste_back), size=int(working) if working else None,
                     output_size="native", detail=settings["detail"], lift_radius=settings["radius"],
                     lift_eps=settings["eps"], lift_prior=settings["prior"], lift_sigma=settings["sigma"]).images[0]
    save_image(image, out, overwrite=True, inputs=[content, reference],
               metadata={"method": "region", "model": options.get("model") or "bundled", "seed": seed, "size": size,
                         "working_size": int(working) if working else stylizer.image_size, **settings})


register_method("region", run_region, description="region-wise photorealistic stylizer (TCP), lifted to the input size; "
                                                  "options: model, strength, mask, detail, lift_radius, lift_eps",
                options=("strength", "mask", "paste_back", "detail", "lift_radius", "lift_eps", "lift_sigma", "lift_prior",
                         "working_size"))

_PIPELINE_CACHE: dict = {}

#: options of the diffusion methods that are passed to the pipeline call as they are (numbers parsed)
_CROSS_IMAGE_CALL_OPTIONS = ("domain", "prompt", "object_noun", "num_inference_steps", "skip_steps", "adain",
                             "contrast_strength", "swap_guidance_scale", "swap_guidance_schedule", "freeu")


def _number(value):
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def run_cross_image(content: Path, reference: Path, out: Path, seed: int, size: int, options: dict) -> None:
    """Cross-Image Attention: the reference's appearance on the content's structure; option domain (default object)."""
    from .cross_image import CrossImageAttentionPipeline
    from .io import save_image
    from .runtime import resolve_device

    key = ("cross-image", str(options.get("model")), str(options.get("device", "auto")), str(options.get("dtype", "fp32")))
    if key not in _PIPELINE_CACHE:
        pipe = CrossImageAttentionPipeline.from_pretrained(options.get("model"), torch_dtype=options.get("dtype", "fp32"),
                                                           offline=options.get("offline"))
        pipe.to(resolve_device(options.get("device", "auto")))
        pipe.set_progress_bar_config(disable=True)
        _PIPELINE_CACHE[key] = pipe
    pipe = _PIPELINE_CACHE[key]
    call = {k: _number(options[k]) for k in _CROSS_IMAGE_CALL_OPTIONS if k in options}
    call.setdefault("domain", "object")
    result = pipe(content, reference, seed=seed, size=size, **call)
    save_image(result.transfer, out, overwrite=True, inputs=[content, reference],
               metadata=pipe.metadata("cross-image-attention", seed=seed, size=size, **call))


register_method("cross-image", run_cross_image,
                description="Cross-Image Attention (zero-shot, Stable Diffusion); options: model, domain, num_inference_steps, ...",
                options=_CROSS_IMAGE_CALL_OPTIONS)


# --------------------------------------------------------------------------------------------- inputs


@dataclass
class Pair:
    content: Path
    reference: Path
    name: str


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "pair"


def load_pairs(source: str | os.PathLike | Sequence) -> list[Pair]:
    """(content, reference) pairs from a folder, a list file, or a sequence of (content, reference) paths.

    - Folder: subfolders ``content/`` and ``reference/`` (or ``style/``); files are paired by file stem when every
      content stem has a reference of the same stem, otherwise by sorted order (the counts must then match).
    - List file: one pair per line, ``content reference`` separated by a tab, a comma or spaces; ``#`` starts a
      comment; relative paths are relative to the list file's folder.
    """
    if not isinstance(source, (str, os.PathLike)):
        pairs = [Pair(Path(c), Path(r), "") for c, r in source]
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"pairs not found: {path} (a folder with content/ and reference/, or a list file)")
        if path.is_dir():
            pairs = _pairs_from_folder(path)
        else:
            pairs = _pairs_from_list(path)
    if not pairs:
        raise InputError(f"no (content, reference) pairs found in {source}")
    for i, p in enumerate(pairs):
        for f in (p.content, p.reference):
            if not f.is_file():
                raise InputError(f"image not found: {f}")
        base = p.name or f"{_safe_name(p.content.stem)}__{_safe_name(p.reference.stem)}"
        p.name = f"{i:03d}_{base}"  # the index keeps names unique and sorted
    return pairs


def _pairs_from_folder(folder: Path) -> list[Pair]:
    content_dir = next((folder / d for d in CONTENT_DIRS if (folder / d).is_dir()), None)
    reference_dir = next((folder / d for d in REFERENCE_DIRS if (folder / d).is_dir()), None)
    if content_dir is None or reference_dir is None:
        raise InputError(f"{folder} needs a content/ and a reference/ (or style/) subfolder")
    contents, references = _images_in(content_dir), _images_in(reference_dir)
    by_stem = {p.stem: p for p in references}
    if contents and all(c.stem in by_stem for c in contents):
        return [Pair(c, by_stem[c.stem], _safe_name(c.stem)) for c in contents]
    if len(contents) != len(references):
        raise InputError(f"{content_dir} has {len(contents)} images and {reference_dir} has {len(references)}; "
                         "give equal numbers (paired in sorted order) or matching file names")
    return [Pair(c, r, "") for c, r in zip(contents, references)]


def _pairs_from_list(path: Path) -> list[Pair]:
    pairs = []
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        raise InputError(f"{path} is not a text list of pairs (one 'content reference' line each)") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in (line.split("\t") if "\t" in line else line.split(",") if "," in line else line.split())]
        parts = [p for p in parts if p]
        if len(parts) != 2:
            raise InputError(f"{path}:{lineno}: expected 'content reference', got {raw.strip()!r}")
        c, r = (Path(p).expanduser() for p in parts)
        pairs.append(Pair(c if c.is_absolute() else path.parent / c, r if r.is_absolute() else path.parent / r, ""))
    return pairs


def match_outputs(folder: str | os.PathLike, pairs: Sequence[Pair]) -> list[Path | None]:
    """The output of each pair in a folder of already made outputs.

    Matched by name: a file whose stem is the pair's name, its content stem, or starts with its 3-digit index;
    otherwise, when the folder holds exactly one image per pair, by sorted order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"outputs folder not found: {folder}")
    files = _images_in(folder)
    by_stem = {f.stem: f for f in files}
    found: list[Path | None] = []
    for i, p in enumerate(pairs):
        hit = by_stem.get(p.name) or by_stem.get(p.content.stem)
        if hit is None:
            hit = next((f for f in files if f.stem.startswith(f"{i:03d}_") or f.stem == f"{i:03d}"), None)
        found.append(hit)
    if any(f is None for f in found):
        if len(files) == len(pairs):
            return list(files)
        missing = sum(f is None for f in found)
        raise InputError(f"{folder}: no output found for {missing} of {len(pairs)} pairs (name outputs after the "
                         "content file or the pair index, or give exactly one image per pair)")
    return found


# --------------------------------------------------------------------------------------------- running


@dataclass
class Cell:
    path: Path | None = None
    error: str | None = None


@dataclass
class Report:
    out_dir: Path
    pairs: list[Pair]
    columns: list[str]  # method names, in order
    cells: dict[str, list[Cell]]
    inputs: list[tuple[Path, Path]]  # prepared (content, reference) per pair
    seeds: list[int]
    size: int | None  # the common working size, or None: each method's native size
    metric_size: int = 256  # metrics and thumbnails compare centre crops of this side
    metrics: dict = field(default_factory=dict)  # method -> metric -> {"value": mean or set value, "values": per pair}
    metric_notes: dict = field(default_factory=dict)  # metric -> why it is missing
    metric_mode: str = "pretrained"
    files: dict = field(default_factory=dict)


def _prepare_inputs(pairs: Sequence[Pair], out_dir: Path, size: int | None, overwrite: bool) -> list[tuple[Path, Path]]:
    from .io import center_crop_resize, load_image, save_image

    prepared = []
    for p in pairs:
        paths = []
        for role, src in (("content", p.content), ("reference", p.reference)):
            dst = out_dir / "inputs" / f"{p.name}.{role}.png"
            img = load_image(src, name=f"{role} image")
            img = center_crop_resize(img, size) if size else img
            save_image(img, dst, overwrite=overwrite, inputs=[p.content, p.reference], metadata={"source": str(src), "size": size})
            paths.append(dst)
        prepared.append((paths[0], paths[1]))
    return prepared


def compare(
    pairs: str | os.PathLike | Sequence,
    out_dir: str | os.PathLike,
    *,
    methods: Sequence[str] = (),
    outputs: Mapping[str, str | os.PathLike] | None = None,
    seed: int = 0,
    seed_policy: str = "same",
    size: int | None = None,
    options: Mapping[str, dict] | None = None,
    shared_options: Mapping | None = None,
    metrics: Sequence[str] | None = None,
    suite=None,
    overwrite: bool = False,
    progress: bool = True,
) -> Report:
    """Run ``methods`` and/or collect ``outputs`` (name -> folder) on ``pairs``; write the report in ``out_dir``.

    ``options``: per-method option dicts; ``shared_options`` go to every method (model, device, ...).
    ``metrics``: metric names of :data:`styleforge.metrics.suite.METRICS` (default
    :data:`~styleforge.metrics.suite.DEFAULT_METRICS`; ``[]`` for none); ``suite``: a
    :class:`~styleforge.metrics.suite.MetricSuite` (networks, weights, random mode).
    """
    from .io import check_not_an_input
    from .metrics.suite import DEFAULT_METRICS, METRICS

    if seed_policy not in SEED_POLICIES:
        raise InputError(f"seed policy must be one of {SEED_POLICIES}, got {seed_policy!r}")
    from .validation import Number, MAX_WORKING_SIDE

    Number(int, 16, MAX_WORKING_SIDE, optional=True, what="a size in pixels").check(size, "size")
    outputs = dict(outputs or {})
    methods = list(methods)
    if not methods and not outputs:
        raise InputError("nothing to compare: name methods to run and/or folders of outputs")
    for name in methods:
        get_method(name)
    clash = set(methods) & set(outputs)
    if clash:
        raise InputError(f"{sorted(clash)} given both as a method to run and as a folder of outputs")
    for name in outputs:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise InputError(f"output column names are letters, digits, '_', '-', '.': {name!r}")
    metrics = list(DEFAULT_METRICS if metrics is None else metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; available: {', '.join(METRICS)}")
    _check_method_options(methods, options or {})
    pairs = load_pairs(pairs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output must be a folder: {out_dir}")
    existing = [f for f in REPORT_FILES if (out_dir / f).exists()]
    if existing and not overwrite:
        raise OutputError(f"{out_dir} already holds a report ({', '.join(existing)}); pass --overwrite to replace it")
    for p in pairs:
        check_not_an_input(out_dir, [p.content, p.reference])
    matched = {name: match_outputs(folder, pairs) for name, folder in outputs.items()}
    before = set(out_dir.rglob("*")) if out_dir.exists() else None
    try:
        return _run_compare(pairs, out_dir, methods, outputs, matched, seed, seed_policy, size, options, shared_options,
                            metrics, suite, overwrite, progress)
    except BaseException:  # a failed comparison leaves nothing of its own behind (copied inputs, partial outputs)
        _remove_new_files(out_dir, before)
        raise


def _check_method_options(methods: Sequence[str], options: Mapping[str, dict]) -> None:
    for name, opts in options.items():
        if name not in methods:
            raise InputError(f"--method-option {name}.{next(iter(opts), 'KEY')}: {name!r} is not among the methods run "
                             f"({', '.join(methods) or 'none'})")
        declared = get_method(name).options
        allowed = SHARED_OPTIONS + tuple(declared or ())
        unknown = sorted(set(opts) - set(allowed)) if declared is not None else []
        if unknown:
            raise InputError(f"--method-option {name}.{unknown[0]}: unknown option of {name!r}; it takes "
                             f"{', '.join(allowed)}")


def _remove_new_files(out_dir: Path, before: set | None) -> None:
    if before is None:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    if not out_dir.exists():
        return
    for path in sorted(set(out_dir.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _run_compare(pairs, out_dir, methods, outputs, matched, seed, seed_policy, size, options, shared_options, metrics,
                 suite, overwrite, progress) -> Report:
    from tqdm.auto import tqdm

    from .metrics.suite import MetricSuite

    inputs = _prepare_inputs(pairs, out_dir, size, overwrite)
    seeds = [seed if seed_policy == "same" else seed + i for i in range(len(pairs))]
    cells: dict[str, list[Cell]] = {}
    shared = dict(shared_options or {})
    options = dict(options or {})
    for name in methods:
        method = get_method(name)
        (out_dir / "outputs" / name).mkdir(parents=True, exist_ok=True)  # methods write one file; the folder is ours
        column = []
        for i, (p, (content, reference)) in enumerate(tqdm(list(zip(pairs, inputs)), desc=name, disable=not progress)):
            out = out_dir / "outputs" / name / f"{p.name}.png"
            if out.exists() and not overwrite:
                raise OutputError(f"output exists: {out} (pass --overwrite to replace it)")
            try:
                method.run(content, reference, out, seeds[i], size, {**shared, **options.get(name, {})})
                if not out.is_file():
                    raise OutputError(f"method {name!r} wrote no file at {out}")
                column.append(Cell(out))
            except StyleforgeError as e:
                column.append(Cell(None, str(e)))
            except Exception as e:  # one failing method must not lose the others' results
                column.append(Cell(None, str(e).strip().splitlines()[0] if str(e).strip() else "failed"))
        if all(c.error for c in column):
            first = column[0].error
            raise StyleforgeError(f"method {name!r} failed on every pair: {first}")
        cells[name] = column
    for name, files in matched.items():
        cells[name] = [Cell(Path(f)) for f in files]

    report = Report(out_dir, pairs, methods + list(outputs), cells, inputs, seeds, size, metric_size=size or 256)
    suite = suite if suite is not None else MetricSuite()
    report.metric_mode = suite.mode
    _compute_metrics(report, metrics, suite, progress)
    _write_report(report, overwrite)
    return report


def _load_tensor(path: Path, size: int):
    from .metrics.images import to_tensor

    return to_tensor(path, size)


def _compute_metrics(report: Report, metrics: Sequence[str], suite, progress: bool) -> None:
    import torch
    from tqdm.auto import tqdm

    from .metrics.suite import METRICS

    usable = []
    for m in metrics:
        if suite.available(m):
            usable.append(m)
        else:
            report.metric_notes[m] = suite.why_unavailable(m)
    contents = torch.cat([_load_tensor(c, report.metric_size) for c, _ in report.inputs])
    references = torch.cat([_load_tensor(r, report.metric_size) for _, r in report.inputs])
    for column in tqdm(report.columns, desc="metrics", disable=not progress or not usable):
        ok = [i for i, cell in enumerate(report.cells[column]) if cell.path is not None]
        results: dict = {}
        if ok:
            outs = torch.cat([_load_tensor(report.cells[column][i].path, report.metric_size) for i in ok])
            idx = torch.tensor(ok)
            for m in usable:
                spec = METRICS[m]
                try:
                    if spec.against == "set":
                        results[m] = suite.set_level(m, contents[idx], references[idx], outs)
                    else:
                        values = suite.per_pair(m, contents[idx], references[idx], outs)
                        per = [math.nan] * len(report.pairs)
                        for i, v in zip(ok, values):
                            per[i] = v
                        finite = [v for v in values if not math.isnan(v)]
                        results[m] = {"value": sum(finite) / len(finite) if finite else math.nan, "values": per}
                except StyleforgeError as e:
                    report.metric_notes[m] = str(e)
        report.metrics[column] = results


# --------------------------------------------------------------------------------------------- writing


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def _thumb(path: Path | None, cell: int, label: str | None = None):
    from PIL import Image, ImageDraw

    from .io import center_crop_resize, load_image

    if path is None:
        img = Image.new("RGB", (cell, cell), (200, 200, 200))
        ImageDraw.Draw(img).text((6, cell // 2 - 6), label or "failed", fill=(120, 0, 0))
        return img
    return center_crop_resize(load_image(path), cell)


def make_grid(report: Report, cell: int | None = None):
    """Rows: pairs; columns: content, reference, then one per method; a header row with the column names."""
    from PIL import Image, ImageDraw

    cell = cell or min(report.metric_size, 256)
    header, gap = 18, GRID_GAP
    names = ["content", "reference"] + report.columns
    rows = len(report.pairs)
    grid = Image.new("RGB", (cell * len(names) + gap * (len(names) - 1), header + cell * rows + gap * (rows - 1)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(names):
        draw.text((j * (cell + gap) + 4, 3), name[: max(4, cell // 7)], fill=(0, 0, 0))
    for i in range(rows):
        row = [report.inputs[i][0], report.inputs[i][1]] + [report.cells[c][i].path for c in report.columns]
        for j, path in enumerate(row):
            grid.paste(_thumb(path, cell), (j * (cell + gap), header + i * (cell + gap)))
    return grid


def _metrics_table_md(report: Report) -> list[str]:
    from .metrics.suite import HIGHER, METRICS

    shown = [m for m in METRICS if any(m in report.metrics.get(c, {}) for c in report.columns)]
    if not shown:
        return ["No metric could be computed (see the notes below)."]
    arrows = {m: "↑" if METRICS[m].better == HIGHER else "↓" for m in shown}
    lines = ["| method | " + " | ".join(f"{METRICS[m].label} {arrows[m]}" for m in shown) + " |",
             "|---|" + "---|" * len(shown)]
    for c in report.columns:
        row = [_fmt(report.metrics.get(c, {}).get(m, {}).get("value")) for m in shown]
        lines.append(f"| {c} | " + " | ".join(row) + " |")
    return lines


def _conventions(report: Report) -> list[str]:
    from .metrics.suite import METRICS

    out = []
    for m in METRICS:
        if any(m in report.metrics.get(c, {}) for c in report.columns):
            spec = METRICS[m]
            against = {"content": "output vs content input", "reference": "output vs reference", "set": "sets"}[spec.against]
            out.append(f"- **{spec.label}** ({against}): {spec.convention}")
    return out


def _caveats(report: Report) -> list[str]:
    notes = []
    if report.metric_mode == "random":
        notes.append("- **Metric networks are randomly initialised** (smoke test / demo): the numbers carry no meaning.")
    if any(m in ("fid", "artfid") for c in report.columns for m in report.metrics.get(c, {})):
        notes.append(f"- FID / ArtFID from {len(report.pairs)} images per set: far below the 2048 feature dimensions, so "
                     "the covariances are singular and the values are biased upwards and depend on N; compare methods "
                     "only within this report, never with published numbers.")
    for m, why in report.metric_notes.items():
        notes.append(f"- `{m}` not computed: {why}")
    for c in report.columns:
        for p, cell in zip(report.pairs, report.cells[c]):
            if cell.error:
                notes.append(f"- {c} failed on {p.name}: {cell.error}")
    return notes


def _settings(report: Report) -> list[str]:
    policy = "same seed for every pair" if len(set(report.seeds)) == 1 else "seed + pair index"
    size = (f"working size {report.size}x{report.size} (centre crop + bicubic resize, the same files for every method)"
            if report.size else "each method at its native working size (the same input files for every method)")
    return [f"- pairs: {len(report.pairs)}; {size}; metrics on {report.metric_size}x{report.metric_size} centre crops",
            f"- seeds: {report.seeds[0] if report.seeds else '-'} ({policy}; identical for every method)",
            f"- methods: {', '.join(report.columns)}",
            f"- metric networks: {report.metric_mode}"]


def render_markdown(report: Report) -> str:
    lines = ["# styleforge comparison", "", *_settings(report), "", "## Metrics (mean over pairs)", "",
             *_metrics_table_md(report), "", *_conventions(report)]
    caveats = _caveats(report)
    if caveats:
        lines += ["", "## Notes", "", *caveats]
    lines += ["", "## Images", "", "![comparison grid](grid.png)", "", "| pair | content | reference | "
              + " | ".join(report.columns) + " |", "|---|---|---|" + "---|" * len(report.columns)]
    for i, p in enumerate(report.pairs):
        rel = [os.path.relpath(x, report.out_dir) for x in report.inputs[i]]
        cols = [f"![]({os.path.relpath(report.cells[c][i].path, report.out_dir)})" if report.cells[c][i].path else "failed"
                for c in report.columns]
        lines.append(f"| {p.name} | ![]({rel[0]}) | ![]({rel[1]}) | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def _data_uri(img) -> str:
    buf = _io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _md_table_to_html(lines: list[str]) -> str:
    if not lines or not lines[0].startswith("|"):
        return f"<p>{html.escape(lines[0] if lines else '')}</p>"
    rows = [[html.escape(x.strip()) for x in l.strip("|").split("|")] for l in lines if not l.startswith("|---")]
    head = "".join(f"<th>{x}</th>" for x in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{x}</td>" for x in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_list_to_html(lines: list[str]) -> str:
    items = []
    for line in lines:
        text = html.escape(line[2:] if line.startswith("- ") else line)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
        items.append(f"<li>{text}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def render_html(report: Report, grid) -> str:
    cell = min(report.metric_size, 192)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["pair", "content", "reference"] + report.columns)
    rows = []
    for i, p in enumerate(report.pairs):
        paths = [report.inputs[i][0], report.inputs[i][1]] + [report.cells[c][i].path for c in report.columns]
        tds = "".join(f'<td><img alt="" width="{cell}" src="{_data_uri(_thumb(x, cell))}"></td>' for x in paths)
        rows.append(f"<tr><td>{html.escape(p.name)}</td>{tds}</tr>")
    caveats = _caveats(report)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>styleforge comparison</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px;text-align:center}img{display:block}</style></head><body>",
        "<h1>styleforge comparison</h1>", _md_list_to_html(_settings(report)),
        "<h2>Metrics (mean over pairs)</h2>", _md_table_to_html(_metrics_table_md(report)),
        _md_list_to_html(_conventions(report)),
        ("<h2>Notes</h2>" + _md_list_to_html(caveats)) if caveats else "",
        "<h2>Grid</h2>", f'<img alt="comparison grid" src="{_data_uri(grid)}">',
        "<h2>Per pair</h2>", f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>",
        "</body></html>", ""])


def _jsonable(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _write_report(report: Report, overwrite: bool) -> None:
    from .io import save_image, write_text_atomic

    out = report.out_dir
    grid = make_grid(report)
    report.files["grid"] = save_image(grid, out / "grid.png", overwrite=overwrite, metadata={"kind": "comparison grid"})
    report.files["markdown"] = write_text_atomic(out / "report.md", render_markdown(report))
    report.files["html"] = write_text_atomic(out / "report.html", render_html(report, grid))
    data = {
        "size": report.size, "metric_size": report.metric_size, "seeds": report.seeds, "metric_networks": report.metric_mode,
        "pairs": [{"name": p.name, "content": str(p.content), "reference": str(p.reference)} for p in report.pairs],
        "outputs": {c: [str(cell.path) if cell.path else None for cell in report.cells[c]] for c in report.columns},
        "errors": {c: [cell.error for cell in report.cells[c]] for c in report.columns},
        "metrics": report.metrics, "metric_notes": report.metric_notes,
    }
    report.files["json"] = write_text_atomic(out / "metrics.json", json.dumps(_jsonable(data), indent=2, ensure_ascii=False) + "\n")
