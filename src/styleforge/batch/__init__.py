"""Batch stylization over manifests and folders: resumable, fault-isolated, sharded over processes.

>>> from styleforge import batch
>>> summary = batch.run("region", "out/", content_dir="photos/", style_dir="looks/", options={"strength": 0.8})
>>> summary.done, summary.skipped, summary.failed

Every job runs the method's own command (``styleforge.options.run_method``), so its files and their PNG metadata
are exactly what ``styleforge region apply ...`` would write; models stay loaded for the whole batch.
"""

from .jobs import Job, build_jobs, folder_rows, given_options, read_manifest
from .runner import Ranks, Summary, collect_jobs, run, run_job
from .state import BATCH_DIR, Journal, read_state

__all__ = ["BATCH_DIR", "Job", "Journal", "Ranks", "Summary", "build_jobs", "collect_jobs", "folder_rows",
           "given_options", "read_manifest", "read_state", "run", "run_job"]
