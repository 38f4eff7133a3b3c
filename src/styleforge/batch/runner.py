"""Running a batch: skip what is done, shard the rest over the processes, run each job through the method's own
command in this process (models kept loaded), publish its files atomically, journal it, and summarise.

Each job runs the command (``styleforge.options.run_method``) with its output inside a private staging folder;
only when the command succeeded are its files moved (``os.replace``, atomic) to their place in the batch folder
and the job journaled as done, with each file's size and sha256. A crash leaves either nothing or files of a job
that is not journaled, which the next run simply redoes (the same bytes: every method is seeded). Distributed
runs (``accelerate launch -m styleforge batch ...``) read the state, wait for each other, then each take a
contiguous block of the jobs still to do, so each job runs exactly once and jobs sharing an input stay together.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import InputError
from ..options import METHODS
from .jobs import Job, build_jobs, folder_rows, parse_job, read_manifest
from .state import DONE, FAILED, Journal, batch_dir, file_record, job_entry, read_state

SUMMARY_FILE = "summary.json"
FAILURES_FILE = "failures.jsonl"
METRICS_FILE = "metrics.json"


@dataclass
class Ranks:
    """This process's place in a distributed run (rank 0 of 1 when not launched by accelerate/torchrun)."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None

    @classmethod
    def from_environment(cls) -> "Ranks":
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        # torch.distributed over gloo on CPU machines, nccl on GPUs (each rank on its own GPU)
        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, state.wait_for_everyone)

    def share(self, jobs: Sequence[Job]) -> list[Job]:
        """This rank's contiguous block of ``jobs`` (blocks differ in size by at most one job)."""
        n = len(jobs)
        return list(jobs[self.rank * n // self.world:(self.rank + 1) * n // self.world])


@dataclass
class Summary:
    method: str
    output: str
    total: int = 0
    done: int = 0  # finished by this run (all ranks)
    skipped: int = 0  # already done before this run
    failed: int = 0  # failed in this run, or failed before and not retried
    pending: int = 0  # still to do (dry run)
    seconds: float = 0.0
    jobs_per_second: float = 0.0
    unet_calls: int = 0
    unet_rows: int = 0
    world_size: int = 1
    failures: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def line(self) -> str:
        text = (f"{self.method}: {self.done} done, {self.skipped} skipped (done before), {self.failed} failed, "
                f"of {self.total} jobs in {self.seconds:.1f} s")
        if self.done:
            text += f" ({self.jobs_per_second:.2f} jobs/s over {self.world_size} process{'es' if self.world_size > 1 else ''})"
        if self.unet_rows:
            text += f"; UNet: {self.unet_calls} calls, {self.unet_rows} rows"
        return text


def collect_jobs(method: str, *, manifest=None, content_dir=None, style_dir=None, mask_dir=None, pairing: str = "all",
                 options: Mapping[str, Any] | None = None) -> list[Job]:
    """The batch's jobs from a manifest or from folders, with ``options`` applied to every job."""
    if (manifest is None) == (content_dir is None):
        raise InputError("give the jobs as --manifest FILE or as --content-dir DIR (with --style-dir for two-input methods)")
    if manifest is not None:
        if style_dir is not None or mask_dir is not None:
            raise InputError("--style-dir/--mask-dir go with --content-dir, not with --manifest")
        return build_jobs(method, read_manifest(manifest), options, base=Path(manifest).parent)
    return build_jobs(method, folder_rows(method, content_dir, style_dir, mask_dir, pairing), options)


def run(method: str, output: str | os.PathLike, *, manifest=None, content_dir=None, style_dir=None, mask_dir=None,
        pairing: str = "all", options: Mapping[str, Any] | None = None, retry_failed: bool = False,
        dry_run: bool = False, metrics: Sequence[str] = (), metric_mode: str = "pretrained", progress: bool = True,
        count_unet: bool | None = None, ranks: Ranks | None = None, echo: Callable[[str], None] = print) -> Summary:
    """Run ``method`` on every job not done yet; see the module docstring and ``styleforge batch --help``.

    ``options``: method options for every job (dests or flag names, as in ``styleforge.options``); a manifest
    column overrides them for its row. Returns the :class:`Summary` (also written to OUT/.styleforge-batch/).
    """
    started = time.perf_counter()
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise InputError(f"the batch output must be a folder: {out}")
    jobs = collect_jobs(method, manifest=manifest, content_dir=content_dir, style_dir=style_dir, mask_dir=mask_dir,
                        pairing=pairing, options=options)
    suite = _metric_suite(metrics, metric_mode) if metrics and not dry_run else None  # missing weights: fail first
    ranks = ranks or Ranks.from_environment()
    state = read_state(out)
    ranks.barrier()  # every rank has read the same state before any rank journals a new job
    ids = Counter(job.id for job in jobs)  # equal ids: equal input contents and options under other names

    def journal_entries(state) -> dict[int, dict]:  # each job's entry in the journal, by index ({} if none)
        return {job.index: job_entry(state, job.id, job.name, ids[job.id] == 1) or {} for job in jobs}

    entries = journal_entries(state)
    status = {j.index: entries[j.index].get("status") for j in jobs}
    skipped = [j for j in jobs if status[j.index] == DONE]
    failed_before = [j for j in jobs if status[j.index] == FAILED and not retry_failed]
    todo = [j for j in jobs if status[j.index] is None or (status[j.index] == FAILED and retry_failed)]
    summary = Summary(method, str(out), total=len(jobs), skipped=len(skipped), world_size=ranks.world)
    if dry_run:
        summary.pending = len(todo)
        summary.failed = len(failed_before)
        if ranks.rank == 0:
            for job in todo:
                target = job_output(method, out, job)
                line = parse_job(method, job.argv, str(target)).command_line
                echo(f"would run {job.short} {target.relative_to(out)}  <- {job.where}: {line}")
            echo(f"{method}: {len(todo)} to run, {len(skipped)} done before, {len(failed_before)} failed before "
                 f"(--retry-failed reruns them), of {len(jobs)} jobs")
        return summary

    mine = ranks.share(todo)
    journal = Journal(out, ranks.rank)
    counter = _unet_counter(method != "region" if count_unet is None else count_unet)
    from ..cli import common

    was_kept = common._KEEP["on"]
    common.keep_models(True)
    try:
        with counter as unet, _progress(mine, enabled=progress and ranks.rank == 0, world=ranks.world) as bar:
            for job in mine:
                journal.append(run_job(method, job, out, ranks.rank, unet))
                bar.update(1)
    finally:
        if not was_kept:
            common.keep_models(False)
    ranks.barrier()  # every rank has journaled its block

    final = journal_entries(read_state(out))
    done_now = [final[j.index] for j in todo if final[j.index].get("status") == DONE]
    failures = [dict(final[j.index], name=j.name, where=j.where) for j in jobs if final[j.index].get("status") == FAILED]
    summary.done = len(done_now)
    summary.failed = len(failures)
    summary.failures = failures
    summary.unet_calls = sum(e.get("unet_calls", 0) for e in done_now)
    summary.unet_rows = sum(e.get("unet_rows", 0) for e in done_now)
    summary.seconds = time.perf_counter() - started
    summary.jobs_per_second = summary.done / summary.seconds if summary.seconds else 0.0
    if ranks.rank == 0:
        if suite is not None:
            finished = [(j, final[j.index]) for j in jobs if final[j.index].get("status") == DONE]
            summary.metrics = compute_metrics(method, out, finished, metrics, suite)
        _write_reports(out, summary)
        echo(summary.line())
        for f in failures[:10]:
            echo(f"  failed: {f['name']} ({f['where']}): {f['reason']}")
        if len(failures) > 10:
            echo(f"  ... and {len(failures) - 10} more in {out / FAILURES_FILE}")
    return summary


# --------------------------------------------------------------------------------------------- one job


def run_job(method: str, job: Job, out: Path, rank: int = 0, unet: dict | None = None) -> dict[str, Any]:
    """Run one job into its staging folder and publish its files; the journal entry (done or failed)."""
    staging = batch_dir(out) / "staging" / f"rank{rank}" / str(job.index)  # equal ids may run on two ranks at once
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
    staging.mkdir(parents=True, exist_ok=True)
    target = job_output(method, staging, job)
    entry = {"id": job.id, "name": job.name, "rank": rank}
    before = dict(unet or {})
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("always")
            args = parse_job(method, job.argv, str(target))
            args.func(args)  # the command's own code (options.run_method without re-building the parser)
        entry["outputs"] = _publish(staging, out, job)
        entry["status"] = DONE
        if caught:
            entry["warnings"] = sorted({str(w.message).splitlines()[0] for w in caught})
    except Exception as e:  # noqa: BLE001 -- fault isolation: any failure of one job is that job's alone
        entry.update(status=FAILED, reason=_reason(e))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    entry["seconds"] = round(time.perf_counter() - t0, 4)
    if unet:
        entry["unet_calls"] = unet["calls"] - before.get("calls", 0)
        entry["unet_rows"] = unet["rows"] - before.get("rows", 0)
    return entry


def job_output(method: str, folder: Path, job: Job) -> Path:
    """The ``--output`` of a job's command: NAME.png, or the folder NAME/ for commands that write a folder."""
    return folder / job.name if METHODS[method].output_is_folder else folder / f"{job.name}.png"


def _reason(e: BaseException) -> str:
    from ..errors import StyleforgeError

    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, StyleforgeError) else f"{type(e).__name__}: {text}"


def _publish(staging: Path, out: Path, job: Job) -> list[dict]:
    """Move the job's files from staging to the batch folder (each move atomic); never over one of its inputs."""
    from ..io import check_not_an_input

    files = sorted(p for p in staging.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError("the command wrote no output")
    records = []
    for src in files:
        dest = out / src.relative_to(staging)
        check_not_an_input(dest, job.inputs)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        records.append(file_record(out, dest))
    return records


@contextlib.contextmanager
def _unet_counter(enabled: bool):
    """UNet calls and rows of every job; diffusers pipelines loaded meanwhile draw no bar of their own."""
    if not enabled:  # region: no UNet, and no reason to import diffusers
        yield {}
        return
    from diffusers import DiffusionPipeline

    from ..diffusion.sampling import count_unet_calls

    had = "_progress_bar_config" in vars(DiffusionPipeline)
    DiffusionPipeline._progress_bar_config = {"disable": True}  # the default of pipelines not configured otherwise
    try:
        with count_unet_calls() as counts:
            yield counts
    finally:
        if not had:
            del DiffusionPipeline._progress_bar_config


@contextlib.contextmanager
def _progress(jobs: Sequence[Job], *, enabled: bool, world: int):
    from tqdm.auto import tqdm

    desc = "jobs (rank 0)" if world > 1 else "jobs"
    with tqdm(total=len(jobs), unit="job", desc=desc, disable=not enabled, dynamic_ncols=True) as bar:
        yield bar


# --------------------------------------------------------------------------------------------- reports


def _write_reports(out: Path, summary: Summary) -> None:
    from ..io import write_text_atomic

    write_text_atomic(out / FAILURES_FILE, "".join(
        json.dumps({k: f.get(k) for k in ("name", "where", "id", "reason", "rank")}) + "\n" for f in summary.failures))
    write_text_atomic(batch_dir(out) / SUMMARY_FILE, json.dumps(asdict(summary), indent=1, default=str))
    if summary.metrics:
        write_text_atomic(out / METRICS_FILE, json.dumps(summary.metrics, indent=1, default=str))


def _metric_suite(metrics: Sequence[str], mode: str):
    """The metric networks, loaded now so that missing weights stop the batch before any job runs."""
    from ..errors import ModelNotFoundError
    from ..metrics.suite import METRICS, MetricSuite

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    suite = MetricSuite(mode=mode)
    for m in metrics:
        if not suite.available(m):
            raise ModelNotFoundError(f"metric {m}: {suite.why_unavailable(m)}")
    return suite


def compute_metrics(method: str, out: Path, finished: Sequence[tuple[Job, dict]], metrics: Sequence[str], suite) -> dict:
    """Each metric over the finished jobs, at each output's size: the method's first input is the content, its
    second (if any) the reference (the compare report's convention, ``styleforge.metrics.suite``)."""
    import math

    import torch

    from ..metrics.images import to_tensor
    from ..metrics.suite import METRICS

    inputs = METHODS[method].inputs
    triples = []
    for job, entry in finished:
        main = entry["outputs"][0]["path"] if METHODS[method].output_is_folder else f"{job.name}.png"
        output = to_tensor(out / main)
        size = tuple(output.shape[-2:])
        content = to_tensor(_first(job.values.get(inputs[0])), size)
        reference = to_tensor(_first(job.values.get(inputs[1])), size) if len(inputs) > 1 and job.values.get(inputs[1]) else content
        triples.append((job, content, reference, output))
    results = {}
    for m in metrics:
        if METRICS[m].against == "set":
            same = {t[3].shape for t in triples}
            if len(same) != 1:
                results[m] = {"note": "set metrics need outputs of one size"}
                continue
            cat = lambda k: torch.cat([t[k] for t in triples])  # noqa: E731
            results[m] = suite.set_level(m, cat(1), cat(2), cat(3))
            continue
        per_job = {job.name: suite.per_pair(m, c, r, o)[0] for job, c, r, o in triples}
        finite = [v for v in per_job.values() if not math.isnan(v)]
        results[m] = {"label": METRICS[m].label, "better": METRICS[m].better, "against": METRICS[m].against,
                      "mean": sum(finite) / len(finite) if finite else math.nan, "n": len(finite), "per_job": per_job}
    return results


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value
