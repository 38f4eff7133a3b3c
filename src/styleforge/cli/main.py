"""Entry point of the ``styleforge`` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from .common import HelpFormatter, Parser

# (module under styleforge.cli, its subcommands register themselves). Order = order in --help.
SUBCOMMAND_MODULES: list[str] = ["appearance", "translate", "pair", "oneshot", "region", "compare", "invert", "tiny_model"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="styleforge",
        description="Reference-based image stylization with published methods on one shared diffusion core.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and library warnings")
    parser.add_argument("--version", action="version", version=f"styleforge {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def _quiet_libraries() -> None:
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")  # library chatter; the toolkit's own warnings still show, on one line each
    warnings.filterwarnings("default", module=r"styleforge(\.|$)")
    warnings.showwarning = lambda message, *a, **k: print(f"styleforge: warning: {message}", file=sys.stderr)
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for lib in (dlog, tlog):  # loading bars and "couldn't connect" chatter; errors still surface as ours
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    # diffusers logs a failed weights lookup as an error before raising; the raised error becomes our one line
    for handler in logging.getLogger("diffusers").handlers:  # filters of handlers also see the child loggers' records
        handler.addFilter(lambda record: not record.getMessage().startswith("An error occurred while trying to fetch"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # --debug may appear anywhere on the line, also after the subcommand
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help and --version exit 0; a refused flag returns 2 like every other refusal
        if e.code in (0, None):
            raise
        return int(e.code) if isinstance(e.code, int) else 2
    args.debug = debug
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if not debug:
        _quiet_libraries()
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")
    from ..errors import StyleforgeError, os_error_message

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("styleforge: interrupted", file=sys.stderr)
        return 130
    except BaseException as e:  # every refusal is one plain line; --debug adds the traceback
        if isinstance(e, SystemExit):
            raise
        if debug:
            traceback.print_exc()
        if isinstance(e, StyleforgeError):
            message, code = str(e), e.exit_code
        elif isinstance(e, OSError):
            message, code = os_error_message(e), 2
        elif isinstance(e, MemoryError):
            message, code = "out of memory: the inputs or settings need more memory than this machine has (try a smaller --size or --batch-size)", 2
        else:  # an unexpected failure
            message, code = f"unexpected failure: {e or type(e).__name__}" + ("" if debug else " (run with --debug for the traceback)"), 1
        print(f"styleforge: error: {_one_line(message)}", file=sys.stderr)
        return code


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
