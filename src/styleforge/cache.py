"""styleforge's on-disk caches: where they live, their size cap (least recently used entries go first), and the
fingerprint of a model's weights that cache keys hold instead of the model's name.

Imports nothing heavy (the ``styleforge cache`` command uses it); torch is imported only to fingerprint weights
that were built in code rather than loaded from a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import InputError

#: default cap of the inversion cache (an SD 1.5 edit-friendly inversion at 512 px and 100 steps is ~13 MB)
DEFAULT_MAX_BYTES = 2 * 1024 ** 3
MAX_SIZE_ENV = "STYLEFORGE_CACHE_MAX_SIZE"
_BLOB_NAME = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024 ** 2, "mb": 1024 ** 2, "g": 1024 ** 3, "gb": 1024 ** 3,
          "t": 1024 ** 4, "tb": 1024 ** 4}


def cache_home() -> Path:
    """``$STYLEFORGE_CACHE``, else ``$XDG_CACHE_HOME/styleforge``, else ``~/.cache/styleforge``."""
    if os.environ.get("STYLEFORGE_CACHE"):
        return Path(os.environ["STYLEFORGE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "styleforge"


def parse_size(text: str | int) -> int:
    """``"2G"``, ``"500MB"``, ``"1.5GiB"``, ``"1048576"`` -> bytes (binary units); ``0`` keeps nothing."""
    if isinstance(text, int):
        return max(text, 0)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower().replace("ib", "b") if m else None
    if unit not in _UNITS:
        raise InputError(f"not a size: {text!r} (examples: 2G, 500M, 0)")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def max_bytes_from_env() -> int:
    value = os.environ.get(MAX_SIZE_ENV)
    return DEFAULT_MAX_BYTES if not value else parse_size(value)


# ----------------------------------------------------------------------------------------- size-capped folder


@dataclass
class CacheUsage:
    entries: int
    bytes: int


class LRUFolder:
    """Files ``*<suffix>`` in one folder, at most ``max_bytes`` in all. A read refreshes an entry's modification
    time, so eviction (oldest modification first) drops the least recently used entries."""

    def __init__(self, root: str | os.PathLike, suffix: str, max_bytes: int):
        self.root, self.suffix, self.max_bytes = Path(root), suffix, max_bytes

    def _entries(self) -> list[tuple[int, int, Path]]:
        out = []
        for p in self.root.glob(f"*{self.suffix}") if self.root.is_dir() else ():
            try:
                st = p.stat()
            except OSError:  # removed by another process meanwhile
                continue
            out.append((st.st_mtime_ns, st.st_size, p))
        return sorted(out)

    def usage(self) -> CacheUsage:
        entries = self._entries()
        return CacheUsage(len(entries), sum(size for _, size, _ in entries))

    def touch(self, path: Path) -> None:
        try:
            os.utime(path)
        except OSError:  # a read-only cache still serves hits
            pass

    def evict(self) -> list[Path]:
        """Remove the least recently used entries until the folder fits ``max_bytes``; returns what went."""
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                continue
            total -= size
            removed.append(path)
        return removed

    def clear(self) -> CacheUsage:
        usage = self.usage()
        for _, _, path in self._entries():
            path.unlink(missing_ok=True)
        return usage


# ----------------------------------------------------------------------------------------- weight fingerprints


def _memo_path() -> Path:
    return cache_home() / "weight-hashes.json"


def _read_memo() -> dict:
    try:
        return json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_memo(memo: dict) -> None:
    path = _memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".weight-hashes.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(memo, f)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs re-hashing next time
        pass


def forget_weight_hashes() -> None:
    _memo_path().unlink(missing_ok=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _model_files(folder: Path) -> list[Path]:
    """The files a diffusers folder loads from: model_index.json and its component subfolders (all files if
    there is no model_index.json). Hidden folders (``.cache`` of ``hf download --local-dir``) are skipped."""
    index = folder / "model_index.json"
    roots: Iterable[Path] = [folder]
    files = []
    if index.is_file():
        try:
            components = [k for k in json.loads(index.read_text()) if not k.startswith("_")]
        except ValueError:
            components = []
        roots = [folder / c for c in components if (folder / c).is_dir()]
        files.append(index)
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [Path(dirpath) / n for n in sorted(filenames) if not n.startswith(".")]
    return files


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """A hash of the contents of every file the model folder loads, with their relative paths.

    Files of a Hugging Face cache snapshot are links to blobs named by their content hash: the name is used,
    nothing is read. Other files are hashed once; the hash is remembered per file with its size and modification
    time, so later calls only ``stat`` them.
    """
    folder = Path(folder)
    memo, changed = _read_memo(), False
    parts = []
    for path in _model_files(folder):
        real = path.resolve()
        if real.parent.name == "blobs" and _BLOB_NAME.match(real.name):
            digest = real.name
        else:
            st = real.stat()
            known = memo.get(str(real))
            if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
                digest = known[2]
            else:
                digest = _sha256_file(real)
                memo[str(real)] = [st.st_size, st.st_mtime_ns, digest]
                changed = True
        parts.append(f"{path.relative_to(folder).as_posix()}:{digest}")
    if changed:
        _write_memo(memo)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def modules_fingerprint(components: dict) -> str:
    """A hash of every parameter and buffer of the torch modules in ``components`` and of the other components'
    configs (scheduler, tokenizer vocabulary size): for pipelines built in code, which have no files."""
    import torch

    h = hashlib.sha256()
    for name in sorted(components):
        value = components[name]
        h.update(name.encode())
        if isinstance(value, torch.nn.Module):
            for key, t in list(value.state_dict().items()):
                h.update(key.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
                h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif value is not None:
            config = getattr(value, "config", None)
            desc = dict(config) if config is not None else {"type": type(value).__name__,
                                                            "vocab": getattr(value, "get_vocab", dict)()}
            h.update(json.dumps(desc, sort_keys=True, default=str).encode())
    return hashlib.sha256(h.digest()).hexdigest()[:32]
