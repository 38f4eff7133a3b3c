"""Entry point of the ``styleforge`` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from .common import HelpFormatter

# (module under styleforge.cli, its subcommands register themselves). Order = order in --help.
SUBCOMMAND_MODULES: list[str] = ["appearance", "translate", "pair", "oneshot", "region", "batch", "compare", "invert",
                                  "tiny_model"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # --debug may appear anywhere on the line, also after the subcommand
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args, extra = parser.parse_known_args(argv)
    if extra:  # only `batch` takes more flags: the method's own, passed on to its parser
        if not hasattr(args, "method_argv"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if "--" in extra:
            extra.remove("--")
        args.method_argv = extra
    args.debug = debug
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if not debug:
        _quiet_libraries()
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")
    from ..errors import StyleforgeError

    try:
        return int(args.func(args) or 0)
    except StyleforgeError as e:
        if debug:
            traceback.print_exc()
        print(f"styleforge: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("styleforge: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: still one line unless --debug
        if debug:
            raise
        print(f"styleforge: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
