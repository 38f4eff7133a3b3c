"""``styleforge batch``: run a method over a manifest or folders, resumably, across processes."""

from __future__ import annotations

from ..options import METHODS
from .common import HelpFormatter

METHOD_NAMES = tuple(METHODS)

DESCRIPTION = """\
Run METHOD on many inputs with its model loaded once per process. Jobs come from a manifest (CSV with a header,
or JSON Lines; one job per row; columns = the method's input options and any per-job option, by option name or
flag name, e.g. content,style,mask,strength or image,source,target,seed; a 'name' column names the output) or
from folders (--content-dir, and --style-dir for two-input methods: every pair, or --pairing by-name).
Relative paths in a manifest are relative to its folder; several files for one option (region --style/--mask)
go in one CSV cell separated by ';' or as a JSON list.

Method options are given as for the method's own command (`styleforge region apply --help`, ...), after the
batch options or after `--`; they apply to every job and a manifest column overrides them for its row.

Each job's files (OUT/NAME.png and the side outputs its command writes, NAME = the input file stems joined by
'__' unless the manifest names it) are written atomically with the command's PNG metadata. The state lives in
OUT/.styleforge-batch/ (a journal per process): rerunning the same command does only what is missing, with the
same bytes. A job's id hashes its input files' contents and its options: renaming a file does not redo a job,
changing an option does. A failing job (corrupt image, empty mask, NaN result) is recorded in OUT/failures.jsonl
and the batch goes on; the exit status is 1 when any job failed.

Several processes: accelerate launch --multi_gpu --num_processes N -m styleforge batch METHOD ... (or torchrun
--nproc_per_node N -m styleforge batch ...; without GPUs both run the processes on the CPU over gloo) shards the
jobs so each runs exactly once; each process writes its own outputs and journal.

examples:
  styleforge batch region -o out/ --content-dir photos/ --style-dir looks/ -- --strength 0.8 --size 256
  styleforge batch appearance -o out/ --manifest pairs.csv -- --domain animal --steps 50
  styleforge batch translate -o out/ --content-dir cats/ -- --source cat --target dog
  accelerate launch --multi_gpu --num_processes 4 -m styleforge batch region -o out/ --manifest jobs.jsonl --metrics ssim,lpips
"""


def register(sub) -> None:
    p = sub.add_parser("batch", help="run a method over a manifest or folders (resumable, sharded over processes)",
                       description=DESCRIPTION, formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("method", choices=METHOD_NAMES, metavar="METHOD", help=f"one of {', '.join(METHOD_NAMES)}")
    p.add_argument("-o", "--output", required=True, help="output folder (outputs, failures.jsonl, metrics.json, state)")
    g = p.add_argument_group("jobs (give a manifest or folders)")
    g.add_argument("--manifest", help="CSV or JSON Lines file, one job per row")
    g.add_argument("--content-dir", help="images for the method's first input (region content, appearance structure, "
                                         "translate/pair image, oneshot input)")
    g.add_argument("--style-dir", help="images for the second input (region style, appearance appearance)")
    g.add_argument("--mask-dir", help="masks named like the content images (region mask, appearance structure mask)")
    g.add_argument("--pairing", choices=("all", "by-name"), default="all",
                   help="every content with every style, or the style with the content's file stem")
    g = p.add_argument_group("run")
    g.add_argument("--retry-failed", action="store_true", help="run the jobs that failed before again")
    g.add_argument("--dry-run", action="store_true", help="list what would run (with each job's command line) and stop")
    g.add_argument("--metrics", default=None, help="comma-separated metrics over the finished jobs, written to "
                                                   "OUT/metrics.json: ssim, psnr, lpips, gram, structure, dreamsim, "
                                                   "identity, fid, artfid (see styleforge compare)")
    g.add_argument("--metric-mode", choices=("pretrained", "random"), default="pretrained",
                   help="published metric weights, or random networks (smoke tests only)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, method_argv=[])


def run(args) -> int:
    from ..batch import given_options
    from ..batch import run as run_batch

    options = given_options(args.method, args.method_argv)
    metrics = [m.strip() for m in (args.metrics or "").split(",") if m.strip()]
    summary = run_batch(args.method, args.output, manifest=args.manifest, content_dir=args.content_dir,
                        style_dir=args.style_dir, mask_dir=args.mask_dir, pairing=args.pairing, options=options,
                        retry_failed=args.retry_failed, dry_run=args.dry_run, metrics=metrics,
                        metric_mode=args.metric_mode, progress=not args.no_progress)
    return 0 if summary.ok else 1
