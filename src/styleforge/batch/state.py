"""What a batch has done: an append-only JSON Lines journal per rank under ``OUT/.styleforge-batch/``.

Each finished or failed job appends one line with a single ``write`` on a file opened for appending, then an
fsync, so ranks never share a file, a killed process loses at most the line it was writing, and a torn or garbled
line (power loss) is skipped when reading. The state of a job is read from every rank's journal: done when some
line says done and its recorded outputs are still there, else failed when some line says failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

BATCH_DIR = ".styleforge-batch"
DONE, FAILED = "done", "failed"


def batch_dir(out: str | os.PathLike) -> Path:
    return Path(out) / BATCH_DIR


class Journal:
    """One rank's journal file."""

    def __init__(self, out: str | os.PathLike, rank: int = 0):
        self.path = batch_dir(out) / f"journal.rank{rank}.jsonl"

    def append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps({**entry, "time": round(time.time(), 3)}, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_entries(out: str | os.PathLike) -> Iterable[dict[str, Any]]:
    """Every well-formed journal line of every rank (order within a file kept)."""
    for path in sorted(batch_dir(out).glob("journal.rank*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a line torn by a crash: that job simply is not recorded
            if isinstance(entry, dict) and "id" in entry and entry.get("status") in (DONE, FAILED):
                yield entry


def outputs_present(out: str | os.PathLike, entry: dict[str, Any]) -> bool:
    return all((Path(out) / f["path"]).is_file() and (Path(out) / f["path"]).stat().st_size == f["bytes"]
               for f in entry.get("outputs", []))


def read_state(out: str | os.PathLike) -> dict[str, dict[str, dict[str, Any]]]:
    """job id -> output name -> its deciding journal entry: the latest "done" whose outputs are all there, else
    the latest "failed"."""
    state: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in sorted(read_entries(out), key=lambda e: e.get("time", 0)):
        named = state.setdefault(entry["id"], {})
        known = named.get(entry.get("name", ""))
        if entry["status"] == DONE:
            if outputs_present(out, entry):
                named[entry.get("name", "")] = entry
        elif known is None or known["status"] != DONE:
            named[entry.get("name", "")] = entry
    return state


def job_entry(state: dict, job_id: str, name: str, id_is_unique: bool = True) -> dict[str, Any] | None:
    """The entry deciding a job: the one under its own output name, or, when no other job of the batch has the
    same id, any entry of that id (its input files were renamed), done before failed."""
    named = state.get(job_id, {})
    if name in named:
        return named[name]
    if not id_is_unique or not named:
        return None
    return next((e for e in named.values() if e["status"] == DONE), next(iter(named.values())))


def file_record(out: Path, path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"path": path.relative_to(out).as_posix(), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
