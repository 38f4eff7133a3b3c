"""Batch jobs: one run of a method's command on one set of inputs, from a manifest or from folders.

A job is a mapping of the method's options (``styleforge.options``: dests such as ``content``, ``strength``)
without the output, the name of its output under the batch folder, and its id: a hash of the contents of its
input files and of every option that shapes the result, so renaming a file does not redo a job and changing an
option does.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import InputError
from ..options import (METHODS, RUN_OPTIONS, command_parser, get_method, method_options, option_aliases, parse_argv,
                       to_argv)

#: manifest columns that are not options: the output name of the row (relative to the batch folder)
NAME_COLUMNS = ("name", "output")
#: cell separator for options that take several values (region ``style``/``mask``) in a CSV manifest
LIST_SEPARATOR = ";"
#: options that choose where and how the process runs, not what a job computes (left out of the job id)
PROCESS_OPTIONS = (*RUN_OPTIONS, "device", "offline", "debug", "command_line", "func")
PAIRINGS = ("all", "by-name")


@dataclass
class Job:
    index: int  # position in the batch's job list
    values: dict[str, Any]  # option dest -> value, inputs included, output excluded
    name: str  # output name relative to the batch folder, without the .png suffix
    where: str  # where the job came from, for messages ("jobs.csv line 4")
    id: str = ""
    inputs: list[str] = field(default_factory=list)  # its input files (never overwritten)
    argv: list[str] = field(default_factory=list)  # its command's flags, output excluded (options.to_argv)

    @property
    def short(self) -> str:
        return self.id[:12]


# --------------------------------------------------------------------------------------------- method options


def to_dests(method: str, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``values`` keyed by option dests (keys: ``options.option_aliases`` spellings, e.g. ``paste-back``)."""
    from ..options import _renamed

    aliases = option_aliases(method)
    out = {}
    for key, value in values.items():
        dest = aliases.get(str(key).lstrip("-").replace("-", "_"))
        if dest is None:  # an old spelling (strip = not --no-save-strip), as options.to_argv takes it
            dest, value = _renamed(str(key), value, {o.dest: o for o in method_options(method)}, aliases)
        if dest is None:
            raise InputError(f"{where}: unknown option {key!r} for {method}; see "
                             f"`styleforge {' '.join(get_method(method).words)} --help`")
        out[dest] = value
    return out


def given_options(method: str, argv: Sequence[str]) -> dict[str, Any]:
    """The method options given on the batch command line (flags as for the method's own command), by dest.

    Parsed by the method's own parser with nothing required and no defaults, so only what was given is
    returned; every job starts from these and its manifest columns override them.
    """
    parser = command_parser(method)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        action.required = False
        action.default = argparse.SUPPRESS
        if not action.option_strings:
            action.nargs = "?"
    dests = {a.dest for a in parser._actions}  # not set_defaults' entries such as func
    values = {k: v for k, v in vars(parser.parse_args(list(argv))).items() if k in dests}
    for dest in ("output", "overwrite"):
        if dest in values:
            raise InputError(f"--{dest} is the batch's own option: give it before the method options (styleforge batch "
                             f"{method} -o OUT ...); each job's output is named after its inputs or the manifest's name column")
    return values


def parse_job(method: str, argv: Sequence[str], output: str) -> argparse.Namespace:
    """``options.make_args`` for a job's flags plus its output: the method's own parser and checks."""
    return parse_argv(method, [*argv, f"--output={output}"])


# --------------------------------------------------------------------------------------------- sources


def read_manifest(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """(where, values) per row of a CSV (header = column names) or JSON Lines manifest; empty cells are left out.

    Relative input paths are taken relative to the manifest's folder (see :func:`build_jobs`).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    rows = []
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path.name} line {lineno}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path.name} line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((f"{path.name} line {lineno}", {k: v for k, v in row.items() if v is not None and v != ""}))
    else:
        reader = csv.reader(text.splitlines())
        header = None
        for record in reader:
            if not record or all(not c.strip() for c in record) or record[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip() for c in record]
                continue
            where = f"{path.name} line {reader.line_num}"
            if len(record) != len(header):
                raise InputError(f"{where}: {len(record)} cells but the header has {len(header)} columns")
            rows.append((where, {k: v.strip() for k, v in zip(header, record) if v.strip() != ""}))
        if header is None:
            raise InputError(f"{path.name}: empty manifest (expected a header row such as content,style,mask)")
    if not rows:
        raise InputError(f"{path.name}: the manifest has no jobs")
    return rows


def images_in(folder: str | os.PathLike, what: str) -> list[Path]:
    from ..compare import _images_in

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {folder}")
    images = _images_in(folder)
    if not images:
        raise InputError(f"no images in {folder}")
    return images


def folder_rows(method: str, content_dir, style_dir=None, mask_dir=None, pairing: str = "all") -> list[tuple[str, dict]]:
    """Jobs from folders: the method's first input from ``content_dir``, its second from ``style_dir`` (every
    content with every style, or pairs with the same file stem), a mask of the content's stem from ``mask_dir``."""
    inputs = METHODS[method].inputs
    if pairing not in PAIRINGS:
        raise InputError(f"--pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    if style_dir is not None and len(inputs) < 2:
        raise InputError(f"{method} takes one input image per job: give --content-dir only")
    if mask_dir is not None and len(inputs) < 3:
        raise InputError(f"{method} takes no mask")
    contents = images_in(content_dir, "content")
    styles = images_in(style_dir, "style") if style_dir is not None else [None]
    masks = {p.stem: p for p in images_in(mask_dir, "mask")} if mask_dir is not None else {}
    if pairing == "by-name" and style_dir is not None:
        by_stem = {p.stem: p for p in styles}
        missing = [c.name for c in contents if c.stem not in by_stem]
        if missing:
            raise InputError(f"--pairing by-name: no style image named like {', '.join(missing[:5])} in {style_dir}")
        pairs = [(c, by_stem[c.stem]) for c in contents]
    else:
        pairs = [(c, s) for c in contents for s in styles]  # content-major: jobs sharing a content run together
    rows = []
    for content, style in pairs:
        values = {inputs[0]: str(content)}
        if style is not None:
            values[inputs[1]] = str(style)
        if mask_dir is not None:
            if content.stem not in masks:
                raise InputError(f"no mask named like {content.name} in {mask_dir}")
            values[inputs[2]] = str(masks[content.stem])
        rows.append((f"{content.name}" + (f" x {style.name}" if style is not None else ""), values))
    return rows


# --------------------------------------------------------------------------------------------- jobs


@functools.lru_cache(maxsize=None)
def _is_repeatable(method: str) -> set[str]:
    return {o.dest for o in method_options(method) if o.repeatable or o.nargs in ("+", "*")}


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _resolve(value: Any, base: Path | None) -> Any:
    if isinstance(value, (list, tuple)):
        return [_resolve(v, base) for v in value]
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() or base is None else base / p)


class FileHashes:
    """sha256 of file contents, remembered per (path, size, mtime) so a style shared by many jobs is read once."""

    def __init__(self):
        self._seen: dict[tuple, str] = {}

    def __call__(self, path: str | os.PathLike) -> str:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        if key not in self._seen:
            from ..cache import _sha256_file

            self._seen[key] = _sha256_file(Path(path))
        return self._seen[key]


def job_key(method: str, args: argparse.Namespace, hashes: FileHashes) -> dict[str, Any]:
    """What a job's id hashes: the method, its input files by content, every other option by value (an option
    naming an existing file, e.g. a style adapter or a direction, by that file's content too)."""
    inputs = set(METHODS[method].inputs)

    def by_content(value, is_input):
        if isinstance(value, (list, tuple)):
            return [by_content(v, is_input) for v in value]
        if isinstance(value, str) and (is_input or os.path.isfile(value)):
            return "sha256:" + hashes(value)
        return value

    key = {"method": method}
    for dest, value in sorted(vars(args).items()):
        if dest in PROCESS_OPTIONS or callable(value):
            continue
        key[dest] = by_content(value, dest in inputs and value is not None)
    return key


def job_id(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _default_name(method: str, values: Mapping[str, Any]) -> str:
    """Input file stems joined by ``__`` (several files of one option by ``+``)."""
    parts = []
    for dest in METHODS[method].inputs:
        value = values.get(dest)
        if value is None:
            continue
        files = value if isinstance(value, (list, tuple)) else [value]
        from ..compare import _safe_name

        parts.append("+".join(_safe_name(Path(str(f)).stem) for f in files))
    return "__".join(parts) or "job"


def _clean_name(name: str, where: str) -> str:
    name = str(name).strip().replace("\\", "/")
    if name.lower().endswith(".png"):
        name = name[:-4]
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or name.startswith("/") or any(p.startswith(".") for p in parts):
        raise InputError(f"{where}: bad output name {name!r} (a relative name inside the output folder)")
    return "/".join(parts)


def build_jobs(method: str, rows: Iterable[tuple[str, Mapping[str, Any]]], options: Mapping[str, Any] | None = None,
               *, base: str | os.PathLike | None = None) -> list[Job]:
    """Jobs from (where, values) rows: ``options`` (the command line's) updated by each row, validated by the
    method's own parser (a bad row is refused with where it came from), with ids and unique output names."""
    get_method(method)
    base = Path(base) if base is not None else None
    repeatable = _is_repeatable(method)
    common = to_dests(method, options or {}, "method options")
    hashes = FileHashes()
    jobs = []
    for index, (where, row) in enumerate(rows):
        row = dict(row)
        name = next((row.pop(c) for c in NAME_COLUMNS if c in row), None)
        values = dict(common)
        for dest, value in to_dests(method, row, where).items():
            if dest in repeatable and isinstance(value, str) and LIST_SEPARATOR in value:
                value = [v.strip() for v in value.split(LIST_SEPARATOR) if v.strip()]
            values[dest] = value
        for dest in METHODS[method].inputs:
            if dest in values and dest in row:  # inputs of a manifest row are relative to the manifest
                values[dest] = _resolve(values[dest], base)
        for dest in METHODS[method].inputs:
            for f in _as_list(values.get(dest)):
                if not Path(f).is_file():
                    raise InputError(f"{where}: input file not found: {f}")
        try:
            argv = to_argv(method, values)[len(get_method(method).words):]
            args = parse_job(method, argv, "job.png")
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        inputs = [f for d in METHODS[method].inputs for f in _as_list(getattr(args, d, None))]
        key = job_key(method, args, hashes)
        jobs.append(Job(index, values, _clean_name(name, where) if name else "", where, job_id(key), inputs, argv))
    _name_jobs(method, jobs)
    return jobs


def _name_jobs(method: str, jobs: list[Job]) -> None:
    """Default names from the inputs; where two jobs would share a name, each gets its short id appended."""
    for job in jobs:
        job.name = job.name or _default_name(method, job.values)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.name] = counts.get(job.name, 0) + 1
    for job in jobs:
        if counts[job.name] > 1:
            job.name = f"{job.name}.{job.id[:8]}"
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.name in seen:  # same inputs and options twice (same id): the second is the same job
            raise InputError(f"{job.where}: the same job as {seen[job.name].where} (same inputs and options)")
        seen[job.name] = job
