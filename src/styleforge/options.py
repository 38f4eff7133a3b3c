"""One description of each method's options, shared by the command line, the web page and the batch runner.

The description is the argparse parser of the method's main command (``styleforge region apply``, ``styleforge
appearance``, ...): its flags, types, defaults, choices and help are written once, in ``styleforge.cli``. This
module reads them (:func:`method_options`), turns a mapping of values into the same ``argparse.Namespace`` the
command line would build, through the same parser and so the same validation and messages (:func:`make_args`),
writes the equivalent command line (:func:`command_line`), and runs the command's own code on it
(:func:`run_method`). Nothing here imports torch: the commands import what they need when they run.
"""

from __future__ import annotations

import argparse
import functools
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .errors import InputError


@dataclass(frozen=True)
class MethodCommand:
    """A method's main command: the words after ``styleforge`` and which of its options are input files."""

    name: str
    words: tuple[str, ...]
    inputs: tuple[str, ...]  # dests of the options that name input files (manifest columns, web uploads)
    output_is_folder: bool = False
    title: str = ""


METHODS: dict[str, MethodCommand] = {
    m.name: m
    for m in (
        MethodCommand("region", ("region", "apply"), ("content", "style", "mask"), title="Region-wise stylizer"),
        MethodCommand("appearance", ("appearance",), ("structure", "appearance", "structure_mask", "appearance_mask"),
                      title="Cross-Image Attention"),
        MethodCommand("translate", ("translate",), ("image",), title="pix2pix-zeroCon"),
        MethodCommand("pair", ("pair", "apply"), ("image",), title="PairCustomization"),
        MethodCommand("oneshot", ("oneshot", "apply"), ("input",), output_is_folder=True, title="One-shot (OSASIS)"),
    )
}

# Other commands described the same way, for the web page (training, the comparison); not methods of a batch.
COMMANDS: dict[str, MethodCommand] = {
    **METHODS,
    **{m.name: m for m in (
        MethodCommand("pair-train", ("pair", "train"), ("content", "styled"), output_is_folder=True,
                      title="PairCustomization training"),
        MethodCommand("oneshot-train", ("oneshot", "train"), ("style", "style_photo"), output_is_folder=True,
                      title="OSASIS training"),
        MethodCommand("compare", ("compare",), ("pairs",), output_is_folder=True, title="Compare"),
    )},
}

# options every command shares that are not per-job settings (they choose the process, not the result)
RUN_OPTIONS = ("output", "overwrite", "help")


@dataclass(frozen=True)
class Option:
    """One option of a method, as its parser declares it."""

    dest: str
    flag: str  # the long flag, e.g. "--strength"
    kind: str  # "flag" (store_true), "bool", "int", "float", "choice", "text"
    default: Any
    help: str
    group: str
    required: bool = False
    repeatable: bool = False  # action="append": one value per occurrence
    choices: tuple[Any, ...] | None = None
    nargs: Any = None
    convert: Callable[[str], Any] | None = None  # the parser's type= callable (validates a string value)
    positional: bool = False  # given without a flag, e.g. ``styleforge translate IMAGE``
    minimum: float | None = None  # the accepted range of a number (or of each value of a START,END pair)
    maximum: float | None = None


def get_method(name: str) -> MethodCommand:
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def get_command(name: str) -> MethodCommand:
    """A method (:data:`METHODS`) or one of the other :data:`COMMANDS`."""
    return COMMANDS[name] if name in COMMANDS else get_method(name)


def command_parser(method: str) -> argparse.ArgumentParser:
    """A new argparse parser of ``method``'s main command (the caller may change it), errors raised as :class:`InputError`."""
    from .cli.main import build_parser

    parser = build_parser()
    for word in get_command(method).words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]

    def error(message: str):
        raise InputError(message)

    parser.error = error  # argparse's default prints usage and exits; callers want one readable message
    return parser


@functools.lru_cache(maxsize=None)
def _parser(method: str) -> argparse.ArgumentParser:
    return command_parser(method)  # only ever used to parse, never changed: one per command, not one per call or job


def _kind(action: argparse.Action) -> str:
    from .cli.common import str2bool

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "flag"
    if isinstance(action, argparse.BooleanOptionalAction) or action.type is str2bool:
        return "bool"
    if action.choices is not None:
        return "choice"
    from .validation import Number

    if action.type is int or (isinstance(action.type, Number) and action.type.kind is int):
        return "int"
    if action.type is float or isinstance(action.type, Number):
        return "float"
    return "text"


def method_options(method: str) -> list[Option]:
    """Every option of ``method``'s main command, in the parser's order, grouped as in ``--help``."""
    return list(_method_options(method))


@functools.lru_cache(maxsize=None)
def _method_options(method: str) -> tuple[Option, ...]:
    # read once per process: to_argv needs them for every job of a batch, and the parsers do not change
    parser = _parser(method)
    group_of = {id(a): g.title or "" for g in parser._action_groups for a in g._group_actions}
    options = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        flag = max(action.option_strings, key=len) if action.option_strings else action.dest
        if isinstance(action, argparse.BooleanOptionalAction):  # --flag/--no-flag: the positive spelling
            flag = action.option_strings[0]
        options.append(Option(
            dest=action.dest, flag=flag, kind=_kind(action), default=action.default, help=action.help or "",
            group=group_of.get(id(action), ""), required=action.required,
            repeatable=isinstance(action, argparse._AppendAction),
            choices=tuple(action.choices) if action.choices is not None else None, nargs=action.nargs,
            convert=action.type if callable(action.type) else None, positional=not action.option_strings,
            minimum=getattr(action.type, "minimum", None), maximum=getattr(action.type, "maximum", None)))
    return tuple(options)


def _tokens(option: Option, value: Any) -> list[str]:
    """Command-line tokens that set ``option`` to ``value`` (None or "" leaves the default)."""
    if value is None or (isinstance(value, str) and value.strip() == "" and option.kind != "text"):
        return []
    if option.positional:
        return [_text(value)]
    if option.kind == "flag":
        return [option.flag] if _truthy(value, option) else []
    if option.kind == "bool":
        return [option.flag if _truthy(value, option) else "--no-" + option.flag[2:]]
    if option.repeatable:
        values = value if isinstance(value, (list, tuple)) else [value]
        return [t for v in values for t in (option.flag, _text(v))]
    if option.nargs in ("+", "*") or isinstance(option.nargs, int):
        values = value if isinstance(value, (list, tuple)) else str(value).split()
        return [option.flag, *(_text(v) for v in values)]
    return [f"{option.flag}={_text(value)}"]  # '=' keeps values that start with '-' (negative numbers)


def _text(value: Any) -> str:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return f"{value[0]},{value[1]}"  # START,END pairs
    return str(value)


def _truthy(value: Any, option: Option) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise InputError(f"{option.flag} expects true or false, got {value!r}")


@functools.lru_cache(maxsize=None)
def option_aliases(method: str) -> dict[str, str]:
    """Key spellings -> option dest: the dest itself and every long flag without dashes (``steps``, ``paste_back``).

    Shared by :func:`to_argv` and the batch manifest, so a web form, a manifest column and a job's key agree.
    """
    options = {o.dest for o in _method_options(method)}
    names = {dest: dest for dest in options}
    for action in _parser(method)._actions:
        if action.dest not in options:
            continue
        negative = isinstance(action, argparse.BooleanOptionalAction)  # --no-x would read as x itself
        for flag in action.option_strings:
            if flag.startswith("--") and not (negative and flag.startswith("--no-")):
                names.setdefault(flag.lstrip("-").replace("-", "_"), action.dest)
    return names


def to_argv(method: str, values: Mapping[str, Any]) -> list[str]:
    """The command line (after ``styleforge``) that sets ``values`` (keys: :func:`option_aliases` spellings)."""
    options = {o.dest: o for o in method_options(method)}
    aliases = option_aliases(method)
    positional, flagged = [], []
    for key, value in values.items():
        dest = aliases.get(str(key).lstrip("-").replace("-", "_"))
        if dest is None:
            dest, value = _renamed(key, value, options, aliases)
        if dest is None:
            raise InputError(f"unknown option {key!r} for {method}; see `styleforge {' '.join(get_command(method).words)} --help`")
        (positional if options[dest].positional else flagged).extend(_tokens(options[dest], value))
    return [*get_command(method).words, *positional, *flagged]


def _renamed(key: str, value: Any, options: Mapping[str, Option], aliases: Mapping[str, str]) -> tuple[str | None, Any]:
    """(dest, value) for an option under its old name (``strip``, ``quiet``: see ``cli.main.RENAMED_FLAGS``)."""
    from .cli.main import RENAMED_FLAGS

    new = RENAMED_FLAGS.get("--" + key.lstrip("-").replace("_", "-"))
    if new is None:
        return None, value
    negated = new.startswith("--no-")
    dest = aliases.get((new[5:] if negated else new[2:]).replace("-", "_"))
    if dest is None or not negated:
        return dest, value
    return dest, not _truthy(value, options[dest])


def parse_argv(method: str, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``method``'s flags (``argv``: the command line after its words) as the command line would."""
    args = _parser(method).parse_args(list(argv))
    args.debug = False
    args.command_line = shell_line([*get_command(method).words, *argv])
    return args


def make_args(method: str, values: Mapping[str, Any]) -> argparse.Namespace:
    """Parse ``values`` exactly as the command line would: same types, defaults, checks and messages."""
    return parse_argv(method, to_argv(method, values)[len(get_command(method).words):])


def command_line(method: str, values: Mapping[str, Any]) -> str:
    """``styleforge ...`` that reproduces a result made from ``values``, ready to paste into a shell."""
    return shell_line(to_argv(method, values))


def shell_line(argv: list[str]) -> str:
    return "styleforge " + " ".join(shlex.quote(t) for t in argv)


def run_method(method: str, values: Mapping[str, Any]) -> argparse.Namespace:
    """Run ``method``'s command on ``values`` in this process (models stay loaded, see ``cli.common``)."""
    args = make_args(method, values)
    args.func(args)
    return args
