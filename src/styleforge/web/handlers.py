"""The functions behind the web page, without the page: files and values in, a :class:`JobResult` out.

Every run builds the values of a command (``styleforge region apply`` and so on) and hands them to
:func:`styleforge.options.run_method`, which parses them with the command's own parser and runs the command's own
code: the page refuses what the command line refuses, with the same message, and writes the same files with the
same metadata. Nothing here imports gradio, so it is tested without a browser.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .. import options
from ..errors import InputError, StyleforgeError

log = logging.getLogger("styleforge.web")

#: commands whose --model is a Stable Diffusion model: the server's --model is their default
SD_COMMANDS = ("appearance", "translate", "pair-train")
#: options a tab never shows: where results go is the page's business, and device/dtype are the server's
PAGE_OPTIONS = (*options.RUN_OPTIONS, "device", "dtype", "offline")
#: options that name files the command writes besides its output; the page has no place for them
SIDE_OUTPUTS = {"translate": ("save_inversion", "save_direction", "save_log")}


class Cancelled(StyleforgeError):
    """The user pressed Cancel: the run stopped at its next step."""


# ------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServerSettings:
    """What ``styleforge serve`` was started with, applied to every run."""

    model: str | None = None  # default Stable Diffusion model of the diffusion tabs
    region_model: str | None = None  # region model folder (None: the bundled model)
    device: str = "auto"
    dtype: str = "auto"
    offline: bool = False

    def values_for(self, command: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if command in SD_COMMANDS and self.model:
            values["model"] = self.model
        if command == "region" and self.region_model:
            values["model"] = self.region_model
        if self.device != "auto":
            values["device"] = self.device
        if self.dtype != "auto" and command != "oneshot-train":  # else each command's own default
            values["dtype"] = self.dtype
        if self.offline:
            values["offline"] = True
        return values


# ---------------------------------------------------------------------------- options as page controls


def advanced_options(command: str, main: Sequence[str] = ()) -> list[options.Option]:
    """The options of ``command`` that go in its "advanced" section: all but the hand-laid main ones, by group."""
    skip = set(main) | set(PAGE_OPTIONS) | set(SIDE_OUTPUTS.get(command, ()))
    kept = [o for o in options.method_options(command) if o.dest not in skip and not o.positional]
    groups = list(dict.fromkeys(o.group for o in kept))  # grouped as in --help (the page's order, and its API's)
    return sorted(kept, key=lambda o: groups.index(o.group))


def control_kind(option: options.Option) -> str:
    """Which control shows ``option``: checkbox, number, dropdown or text."""
    if option.kind in ("flag", "bool"):
        return "checkbox"
    if option.nargs is not None or option.repeatable or isinstance(option.default, (tuple, list)):
        return "text"  # lists and START,END pairs are typed as the command line takes them
    if option.kind == "choice":
        return "dropdown"
    if option.kind in ("int", "float"):
        # a number box cannot be empty (it sends 0), so an option whose default is "not given" is typed as text
        return "text" if option.default is None else "number"
    return "text"


def shown_default(option: options.Option) -> Any:
    """``option``'s default as its control shows it."""
    default = option.default
    kind = control_kind(option)
    if kind == "checkbox":
        return bool(default)
    if kind == "text":
        if default is None:
            return ""
        if isinstance(default, (tuple, list)):
            if len(default) == 2 and option.nargs is None and not option.repeatable:
                return f"{default[0]},{default[1]}"  # START,END pairs
            return " ".join(str(v) for v in default)
        return str(default)
    return default


def find_option(command: str, dest: str) -> options.Option:
    """``command``'s option ``dest``, as :func:`styleforge.options.method_options` reads it from the parser."""
    return next(o for o in options.method_options(command) if o.dest == dest)


def parser_default(command: str, dest: str) -> Any:
    """The default of one option of ``command``, as its parser declares it."""
    return find_option(command, dest).default


def _unless_default(values: dict[str, Any], command: str, dest: str, raw: Any, convert: Callable[[Any], Any]) -> None:
    """``values[dest] = convert(raw)`` unless ``raw`` is None or gives the parser's default (no flag for it then)."""
    if raw is not None and convert(raw) != parser_default(command, dest):
        values[dest] = convert(raw)


def _numbers(text: str) -> list[float] | None:
    """The numbers of a space- or comma-separated text; None if one is not a number (the parser then says so)."""
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        return None


def value_from_control(option: options.Option, raw: Any) -> Any:
    """The value to pass for ``option`` from its control, or None when it is left at the default."""
    kind = control_kind(option)
    if kind == "checkbox":
        value = bool(raw)
        return None if value == bool(option.default) else value
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if kind == "number":
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise InputError(f"{option.flag} expects a number, got {raw!r}") from None
        if option.kind == "int":
            if number != int(number):
                raise InputError(f"{option.flag} expects a whole number, got {raw}")
            number = int(number)
        return None if option.default is not None and number == option.default else number
    if kind == "text":
        text = str(raw).strip()
        return None if text == shown_default(option) else text
    return None if raw == option.default else raw


def values_from_controls(command: str, controls: Sequence[options.Option], raws: Sequence[Any]) -> dict[str, Any]:
    """Option values (only the changed ones) of ``command`` from its advanced controls, in order."""
    values = {}
    for option, raw in zip(controls, raws):
        value = value_from_control(option, raw)
        if value is not None:
            values[option.dest] = value
    return values


# ------------------------------------------------------------------------------------------ workspace


def _slug(text: str, fallback: str = "item") -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text or "").strip("._")[:60] or fallback


class Workspace:
    """Per-session temporary folders: ``ROOT/<session>/jobs/NNNN-kind`` (the newest few kept), ``styles/``, ``runs/``.

    A session's folder goes when its page is closed (:meth:`end_session`), the root when the server stops.
    """

    def __init__(self, parent: str | Path | None = None, keep_jobs: int = 4):
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        # a fresh folder of our own, even inside a given one: closing removes only what the page wrote
        self.root = Path(tempfile.mkdtemp(prefix="styleforge-web-", dir=parent))
        self.keep_jobs = keep_jobs
        self._counter = 0
        self._lock = threading.Lock()

    def session(self, session_id: str | None) -> Path:
        folder = self.root / _slug(session_id or "local", "local")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def new_job(self, session_id: str | None, kind: str) -> Path:
        jobs = self.session(session_id) / "jobs"
        with self._lock:
            self._counter += 1
            job = jobs / f"{self._counter:05d}-{_slug(kind)}"
        job.mkdir(parents=True)
        for old in sorted(jobs.iterdir())[:-self.keep_jobs]:  # results were copied to the page's cache already
            shutil.rmtree(old, ignore_errors=True)
        return job

    def new_folder(self, session_id: str | None, where: str, name: str) -> Path:
        """A fresh folder ``<session>/<where>/<name>`` (a suffix when the name is taken); not created."""
        base = self.session(session_id) / where
        base.mkdir(exist_ok=True)
        stem, i = _slug(name, where), 1
        path = base / stem
        while path.exists():
            i += 1
            path = base / f"{stem}-{i}"
        return path

    def styles(self, session_id: str | None) -> list[Path]:
        base = self.session(session_id) / "styles"
        return sorted(p for p in base.glob("*") if (p / "style.safetensors").is_file()) if base.is_dir() else []

    def runs(self, session_id: str | None) -> list[Path]:
        base = self.session(session_id) / "runs"
        return sorted(p for p in base.glob("*") if (p / "osasis.json").is_file()) if base.is_dir() else []

    def end_session(self, session_id: str | None) -> None:
        shutil.rmtree(self.root / _slug(session_id or "local", "local"), ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# -------------------------------------------------------------------------------------- one job at a time


class JobRunner:
    """Runs one job at a time (one GPU, one model set) and lets its session cancel it between two steps."""

    def __init__(self):
        self._lock = threading.Lock()
        self._current: tuple[str | None, threading.Event, int] | None = None

    @contextmanager
    def job(self, session_id: str | None) -> Iterator[threading.Event]:
        event = threading.Event()
        with self._lock:
            self._current = (session_id, event, threading.get_ident())
            try:
                yield event
            finally:
                self._current = None
                # after the response, not before it: the collection takes ~0.15 s with the libraries loaded
                threading.Thread(target=release_memory, daemon=True).start()

    @property
    def busy(self) -> bool:
        return self._current is not None

    def cancel(self, session_id: str | None) -> bool:
        """Ask the running job of ``session_id`` to stop; False when that session runs nothing."""
        current = self._current
        if current is None or current[0] != session_id:
            return False
        current[1].set()
        return True

    def check(self) -> None:
        """Raise :class:`Cancelled` inside a cancelled job's thread (called at every step of its loops)."""
        current = self._current
        if current is not None and current[1].is_set() and current[2] == threading.get_ident():
            raise Cancelled("cancelled: the run stopped at your request")


def release_memory() -> None:
    """Hand the heap a run freed back to the system (glibc keeps it otherwise: the server's RSS would creep up by
    tens of MB over a few dozen runs without any object being kept); a no-op where there is no glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# -------------------------------------------------------------------------------------------- results


@dataclass
class JobResult:
    images: list[tuple[str, str]]  # (PNG path, caption) to show
    files: list[str]  # to download
    settings: dict
    command: str
    message: str
    table: list[list[Any]] | None = None
    headers: list[str] | None = None
    extra: dict = field(default_factory=dict)


def _shown(value: Any, names: Mapping[str, str], job: Path | None) -> Any:
    if isinstance(value, (list, tuple)):
        return [_shown(v, names, job) for v in value]
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, str) and job is not None and value.startswith(f"{job}/"):
        return value[len(str(job)) + 1:]  # a file the page wrote for this run (the drawn mask, the content)
    return value


def display_command(command: str, values: Mapping[str, Any], names: Mapping[str, str], job: Path | None = None) -> str:
    """The ``styleforge ...`` line of a run, with the page's temporary paths shown as plain file names."""
    return options.command_line(command, {k: _shown(v, names, job) for k, v in values.items()})


def upload_names(paths: Sequence[str | None]) -> dict[str, str]:
    """Temporary upload path -> the file name to show (the upload's own name)."""
    return {str(p): Path(p).name for p in paths if p}


def run_command(command: str, values: Mapping[str, Any], job: Path, names: Mapping[str, str] | None = None,
                output_name: str = "result") -> JobResult:
    """Run ``command`` on ``values`` with its output in ``job/out``; collect what it wrote."""
    spec = options.get_command(command)
    out_dir = job / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / output_name if spec.output_is_folder else out_dir / f"{output_name}.png"
    values = {**values, "output": str(output)}
    names = {**(names or {}), str(output): output.name + ("/" if spec.output_is_folder else "")}
    line = display_command(command, values, names, job)  # refuses unknown options before any work
    options.run_method(command, values)
    written = sorted(p for p in out_dir.rglob("*.png"))
    main = [p for p in written if p.stem == output_name]
    ordered = main + [p for p in written if p not in main]
    settings = _read_settings(ordered[0]) if ordered else {}
    images = [(str(p), _caption(p, output, spec.output_is_folder)) for p in ordered]
    return JobResult(images=images, files=[str(p) for p in ordered], settings=settings, command=line,
                     message=f"done: {len(ordered)} image{'s' * (len(ordered) != 1)}")


def _read_settings(path: Path) -> dict:
    from ..io import read_metadata

    try:
        return read_metadata(path)
    except Exception:  # a report grid has none; the run itself succeeded
        return {}


def _caption(path: Path, output: Path, folder: bool) -> str:
    if folder:
        return str(path.relative_to(output)) if path.is_relative_to(output) else path.name
    return "result" if path == output else path.name.removeprefix(output.stem + ".").removesuffix(".png")


def error_message(exc: BaseException, names: Mapping[str, str] | None = None) -> str:
    """One readable line for the page: the command's own message for refusals, the type for a failure."""
    if isinstance(exc, StyleforgeError):
        text = str(exc)
    else:
        log.error("run failed", exc_info=exc)  # the traceback goes to the server's log, not the page
        text = f"unexpected error: {type(exc).__name__}: {exc} (details in the server log)"
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    return " ".join(text.split()) or type(exc).__name__


def upload_refusal(path: str, name: str, label: str) -> str | None:
    """Why an uploaded image cannot be used (the loaders' own words, with the upload's name), or None."""
    from ..io import load_image

    try:
        load_image(path, name=label)
    except InputError as e:
        return f"{label}: {error_message(e, {path: name})}"
    return None


# ---------------------------------------------------------------------------------------------- masks


def mask_from_layer(layer) -> Any:
    """A painted editor layer (RGBA, transparent where unpainted) as a white-on-black mask, None if unpainted."""
    import numpy as np
    from PIL import Image

    if layer is None:
        return None
    img = layer if isinstance(layer, Image.Image) else Image.open(layer)
    if "A" in img.getbands():
        painted = np.asarray(img.getchannel("A")) > 0
    else:
        painted = np.asarray(img.convert("L")) > 0
    if not painted.any():
        return None
    return Image.fromarray((painted * 255).astype("uint8"), mode="L")


def save_mask(mask, job: Path, name: str) -> str:
    path = job / f"{name}.png"
    mask.save(path)
    return str(path)


def save_input(image, job: Path, name: str) -> str:
    """An image the page holds in memory (the editor's background) as a PNG file for the command."""
    from ..io import to_rgb

    path = job / f"{name}.png"
    to_rgb(image).save(path)
    return str(path)


# -------------------------------------------------------------------------------------------- the tabs


def region(job: Path, server: ServerSettings, content: str | None, styles: Sequence[str | None],
           masks: Sequence[str | None], strength: float, paste_back: bool, seed: int | None,
           extra: Mapping[str, Any], names: Mapping[str, str] | None = None) -> JobResult:
    """``region apply``: one edit per style; ``masks[i]`` (a file, or None) restyles only that region of ``styles[i]``."""
    if not content:
        raise InputError("give a content image (upload one or pick an example)")
    edits = []
    for i, style in enumerate(styles):
        mask = masks[i] if i < len(masks) else None
        if style:
            edits.append((style, mask))
        elif mask:
            raise InputError(f"edit {i + 1} has a mask but no style image")
    if not edits:
        raise InputError("give at least one style image")
    with_mask = [m is not None for _, m in edits]
    if any(with_mask) and not all(with_mask):
        missing = ", ".join(str(i + 1) for i, has in enumerate(with_mask) if not has)
        raise InputError(f"edit {missing} has no mask: paint or upload a mask for every style, or none for a "
                         "global transfer")
    values = {**server.values_for("region"), "content": content, "style": [s for s, _ in edits], **extra}
    if all(with_mask):
        values["mask"] = [m for _, m in edits]
    _unless_default(values, "region", "strength", strength, float)
    _unless_default(values, "region", "paste_back", paste_back, bool)
    _unless_default(values, "region", "seed", seed, int)
    return run_command("region", values, job, names)


def appearance(job: Path, server: ServerSettings, structure: str | None, appearance_image: str | None,
               structure_mask: str | None, appearance_mask: str | None, domain: str, prompt: str, object_noun: str,
               seed: int | None, steps: int | None, extra: Mapping[str, Any],
               names: Mapping[str, str] | None = None) -> JobResult:
    """``appearance`` (Cross-Image Attention): the transfer, the two reconstructions and the AdaIN masks."""
    if not structure or not appearance_image:
        raise InputError("give a structure image and an appearance image")
    values = {**server.values_for("appearance"), "structure": structure, "appearance": appearance_image,
              "structure_mask": structure_mask, "appearance_mask": appearance_mask,
              "domain": (domain or "").strip() or None, "prompt": (prompt or "").strip() or None,
              "object_noun": (object_noun or "").strip() or None, **extra}
    _unless_default(values, "appearance", "seed", seed, int)
    _unless_default(values, "appearance", "num_inference_steps", steps, int)
    if not values["domain"] and not values["prompt"]:
        raise InputError("give a domain (an object noun such as animal) or a prompt")
    return run_command("appearance", _drop_none(values), job, names)


def translate(job: Path, server: ServerSettings, image: str | None, source: str, target: str, source_prompt: str,
              target_prompt: str, sentences_source: str | None, sentences_target: str | None, caption: str,
              contrastive_weight: float | None, seed: int | None, steps: int | None, extra: Mapping[str, Any],
              names: Mapping[str, str] | None = None) -> JobResult:
    """``translate`` (pix2pix-zeroCon; pix2pix-zero with contrastive weight 0)."""
    if not image:
        raise InputError("give an image to translate")
    text = lambda v: (v or "").strip() or None  # noqa: E731
    values = {**server.values_for("translate"), "image": image, "source": text(source), "target": text(target),
              "source_prompt": text(source_prompt), "target_prompt": text(target_prompt),
              "sentences_source": sentences_source, "sentences_target": sentences_target,
              "caption": text(caption), **extra}
    _unless_default(values, "translate", "contrastive_weight", contrastive_weight, float)
    _unless_default(values, "translate", "seed", seed, int)
    _unless_default(values, "translate", "steps", steps, int)
    return run_command("translate", _drop_none(values), job, names)


def pair_apply(job: Path, server: ServerSettings, styles: Sequence[str], prompt: str, image: str | None,
               style_scale: str, seed: int | None, steps: int | None, extra: Mapping[str, Any],
               names: Mapping[str, str] | None = None) -> JobResult:
    """``pair apply``: one or more trained styles (blended) on a prompt, or on a photo."""
    styles = [s for s in styles if s]
    if not styles:
        raise InputError("choose a style trained in this session or upload a style.safetensors")
    values = {**server.values_for("pair"), "styles": list(styles), "prompt": (prompt or "").strip(), "image": image,
              **extra}
    scales = str(style_scale or "").strip()
    if scales and _numbers(scales) != parser_default("pair", "style_scale"):
        values["style_scale"] = scales.replace(",", " ")
    _unless_default(values, "pair", "seed", seed, int)
    _unless_default(values, "pair", "steps", steps, int)
    return run_command("pair", _drop_none(values), job, names)


def pair_train(job: Path, style_dir: Path, server: ServerSettings, content: str | None, styled: str | None,
               style_words: str, subject: str, iterations: int | None, seed: int | None, extra: Mapping[str, Any],
               names: Mapping[str, str] | None = None) -> JobResult:
    """``pair train`` into ``style_dir``; the result offers the style folder as a zip and its validation images."""
    if not content or not styled:
        raise InputError("give the content image and its stylized version")
    if not (style_words or "").strip():
        raise InputError("name the style in a few words (e.g. watercolor painting)")
    values = {**server.values_for("pair-train"), "content": content, "styled": styled,
              "style_word": style_words.strip(), **extra}
    _unless_default(values, "pair-train", "subject", (subject or "").strip() or None, str)
    _unless_default(values, "pair-train", "iterations", iterations, int)
    _unless_default(values, "pair-train", "seed", seed, int)
    job_out = job / "out"
    job_out.mkdir(parents=True, exist_ok=True)
    values["output"] = str(style_dir)
    shown = {**(names or {}), str(style_dir): style_dir.name + "/"}
    line = display_command("pair-train", values, shown)
    options.run_method("pair-train", values)
    archive = zip_folder(style_dir, job_out / f"{style_dir.name}.zip", skip=("checkpoints",))
    pngs = sorted(style_dir.rglob("*.png"))
    settings = json.loads((style_dir / "style.json").read_text()) if (style_dir / "style.json").is_file() else {}
    return JobResult(images=[(str(p), p.stem) for p in pngs], files=[str(archive), str(style_dir / "style.safetensors")],
                     settings=settings, command=line, message=f"trained style {style_dir.name!r}",
                     extra={"style": str(style_dir)})


def oneshot_apply(job: Path, server: ServerSettings, run: str | None, photos: Sequence[str], seed: int | None,
                  extra: Mapping[str, Any], names: Mapping[str, str] | None = None) -> JobResult:
    """``oneshot apply``: a trained OSASIS run on uploaded photos (copied into one input folder)."""
    if not (run or extra.get("checkpoint")):
        raise InputError("choose a run trained in this session, or give a run folder or an official checkpoint")
    photos = [p for p in photos if p]
    if not photos:
        raise InputError("give one or more photos to stylize")
    inputs = job / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for p in photos:
        shutil.copy(p, inputs / Path(p).name)
    values = {**server.values_for("oneshot"), "run": run, "input": str(inputs), **extra}
    _unless_default(values, "oneshot", "seed", seed, int)
    return run_command("oneshot", _drop_none(values), job, {**(names or {}), str(inputs): "photos/"})


def oneshot_train(job: Path, run_dir: Path, server: ServerSettings, style: str | None, style_photo: str | None,
                  iterations: int | None, seed: int | None, extra: Mapping[str, Any],
                  names: Mapping[str, str] | None = None) -> JobResult:
    """``oneshot train`` into ``run_dir`` (the artwork and its photo-like counterpart are given)."""
    if not style or not style_photo:
        raise InputError("give the artwork and its photo-like counterpart (from `styleforge oneshot prepare`)")
    values = {**server.values_for("oneshot-train"), "style": style, "style_photo": style_photo, **extra}
    if iterations is not None:
        values["iterations"] = int(iterations)
    _unless_default(values, "oneshot-train", "seed", seed, int)
    values["output"] = str(run_dir)
    line = display_command("oneshot-train", values, {**(names or {}), str(run_dir): run_dir.name + "/"})
    options.run_method("oneshot-train", values)
    pngs = sorted(run_dir.rglob("*.png"))
    meta = run_dir / "osasis.json"
    settings = json.loads(meta.read_text()) if meta.is_file() else {}
    return JobResult(images=[(str(p), str(p.relative_to(run_dir))) for p in pngs], files=[], settings=settings,
                     command=line, message=f"trained run {run_dir.name!r}", extra={"run": str(run_dir)})


def compare(job: Path, server: ServerSettings, contents: Sequence[str], references: Sequence[str],
            methods: Sequence[str], size: int | None, seed: int | None, extra: Mapping[str, Any],
            names: Mapping[str, str] | None = None) -> JobResult:
    """``compare``: (content, reference) pairs in upload order through ``methods``; the grid and the metrics table."""
    contents, references = [c for c in contents or [] if c], [r for r in references or [] if r]
    if not contents or len(contents) != len(references):
        raise InputError(f"give as many reference images as content images ({len(contents)} content, "
                         f"{len(references)} reference); they pair up in upload order")
    if not methods:
        raise InputError("choose at least one method to compare")
    pairs = job / "pairs.txt"
    pairs.write_text("".join(f"{c}\t{r}\n" for c, r in zip(contents, references)))
    values = {**server.values_for("compare"), "pairs": str(pairs), "methods": ",".join(methods), **extra}
    if size is not None and str(size).strip():  # empty: each method at its own size (the command's default)
        values["size"] = str(size).strip()
    _unless_default(values, "compare", "seed", seed, int)
    result = run_command("compare", values, job, {**(names or {}), str(pairs): "pairs.txt"}, output_name="report")
    report = job / "out" / "report"
    metrics = json.loads((report / "metrics.json").read_text()) if (report / "metrics.json").is_file() else {}
    result.headers, result.table = metrics_table(metrics)
    grid = report / "grid.png"
    result.images = [(str(grid), "grid")] + [i for i in result.images if i[0] != str(grid)]
    result.files = [str(report / f) for f in ("grid.png", "report.html", "metrics.json") if (report / f).is_file()]
    result.settings = {k: v for k, v in metrics.items() if k not in ("metrics", "per_pair")} or metrics
    result.message = f"compared {len(methods)} method(s) on {len(contents)} pair(s)"
    return result


def metrics_table(report: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows) of a compare ``metrics.json``: one row per method, one column per metric (the mean)."""
    per_method = report.get("metrics") or {}
    metric_names = sorted({m for values in per_method.values() for m in values})
    rows = []
    for method, values in per_method.items():
        row = [method]
        for m in metric_names:
            v = values.get(m)
            v = v.get("value") if isinstance(v, Mapping) else v
            row.append(round(v, 4) if isinstance(v, float) else v)
        rows.append(row)
    return ["method", *metric_names], rows


def zip_folder(folder: Path, archive: Path, skip: Sequence[str] = ()) -> Path:
    """``folder`` as a zip (its top-level ``skip`` entries left out), for download."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and rel.parts[0] not in skip:
                z.write(path, Path(folder.name) / rel)
    return archive


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
