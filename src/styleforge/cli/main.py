"""Entry point of the ``styleforge`` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from .common import HelpFormatter, Parser

# (module under styleforge.cli, its subcommands register themselves). Order = order in --help.
SUBCOMMAND_MODULES: list[str] = ["appearance", "translate", "pair", "oneshot", "region", "batch", "compare", "invert",
                                  "serve", "tiny_model", "cache"]


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


#: spellings replaced when the flags were harmonised (one spelling per concept, booleans as --flag/--no-flag)
RENAMED_FLAGS = {"--quiet": "--no-progress", "--strip": "--save-strip"}
RENAMED_VALUES = {("--kind", "edit-friendly"): "edit_friendly"}  # choices are spelt as in Python


def _boolean_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every positive ``--flag`` of a BooleanOptionalAction, in all subcommands."""
    flags = set()
    for action in parser._actions:
        if isinstance(action, argparse.BooleanOptionalAction):
            flags.update(o for o in action.option_strings if not o.startswith("--no-"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _boolean_flags(sub)
    return flags


def modernise_argv(argv: list[str], boolean_flags: set[str]) -> tuple[list[str], list[str]]:
    """(argv with old spellings replaced, one deprecation warning per replacement): renamed flags, ``--flag
    true|false`` / ``--flag=false`` (the old form of the booleans) and renamed choice values."""
    out, warnings, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--"):
            out.append(token)
            continue
        name, eq, inline = token.partition("=")
        flag = RENAMED_FLAGS.get(name, name)
        value = inline if eq else (argv[i] if i < len(argv) else None)
        negated = flag.startswith("--no-") and "--" + flag[5:] in boolean_flags
        base = "--" + flag[5:] if negated else flag
        on = _bool_word(value)
        if base in boolean_flags and on is not None:
            new = base if on != negated else "--no-" + base[2:]
            warnings.append(f"`{name} {value}` is deprecated; use {new}")
            out.append(new)
            i += 0 if eq else 1
        elif not eq and (flag, value) in RENAMED_VALUES:
            warnings.append(f"`{name} {value}` is deprecated; use {flag} {RENAMED_VALUES[flag, value]}")
            out += [flag, RENAMED_VALUES[flag, value]]
            i += 1
        else:
            if flag != name:
                warnings.append(f"{name} is deprecated; use {flag}")
            out.append(flag + eq + inline)
    return out, warnings


def _bool_word(value: str | None) -> bool | None:
    from .common import str2bool

    try:
        return None if value is None else str2bool(value)
    except argparse.ArgumentTypeError:
        return None


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
    argv, deprecated = modernise_argv(argv, _boolean_flags(parser))
    for message in deprecated:
        print(f"styleforge: warning: {message}", file=sys.stderr)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # only `batch` takes more flags: the method's own, passed on to its parser
            if not hasattr(args, "method_argv"):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            if "--" in extra:
                extra.remove("--")
            args.method_argv = extra
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
