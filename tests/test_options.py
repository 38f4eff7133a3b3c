"""The one description of each method's options (styleforge.options): read from the CLI parsers, parsed through
them, and run through the commands' own code with models kept between runs."""

import argparse
import shlex

import pytest

from styleforge import options
from styleforge.cli import common
from styleforge.cli.main import build_parser
from styleforge.errors import InputError
from styleforge.io import read_metadata

EXAMPLES = {"content": "examples/content_landscape.png", "style": "examples/style_coffee.png"}


@pytest.mark.parametrize("method", list(options.METHODS))
def test_every_method_lists_its_parser_options(method):
    opts = options.method_options(method)
    dests = {o.dest for o in opts}
    assert {"model", "device", "dtype", "seed", "output"} <= dests  # the common flags
    for name in options.METHODS[method].inputs:
        assert name in dests
    assert all(o.help for o in opts if o.dest != "help")
    kinds = {o.dest: o.kind for o in opts}
    assert kinds["device"] == "choice" and kinds["seed"] == "int"


def test_make_args_equals_the_command_line_parse():
    values = {"content": "a b.png", "style": ["s1.png", "s2.png"], "mask": ["m1.png", "m2.png"], "strength": 0.25,
              "paste_back": True, "feather": "1.5", "output": "out.png", "seed": -3}
    args = options.make_args("region", values)
    line = options.command_line("region", values)
    expected = build_parser().parse_args(shlex.split(line)[1:])
    routing = {"command", "region_command", "func"}  # which subcommand: set by the top-level parser only
    assert set(vars(expected)) - routing <= set(vars(args))
    for key, value in vars(expected).items():
        if key not in routing:
            assert getattr(args, key) == value, key
    assert args.strength == 0.25 and args.feather == 1.5 and args.style == ["s1.png", "s2.png"] and args.seed == -3
    assert args.paste_back is True


def test_flag_names_are_accepted_too_and_unknown_options_refused():
    args = options.make_args("region", {"--content": "a.png", "paste-back": "true", "style": "s.png", "output": "o.png"})
    assert args.content == "a.png" and args.paste_back is True
    with pytest.raises(InputError, match="unknown option 'colour'"):
        options.make_args("region", {"content": "a.png", "style": "s.png", "output": "o.png", "colour": 1})


def test_every_long_flag_is_a_key_as_in_a_batch_manifest():
    # appearance's --steps is the short spelling of --num-inference-steps (dest num_inference_steps)
    assert "--num-inference-steps=7" in options.to_argv("appearance", {"steps": 7})
    assert options.option_aliases("region")["paste_back"] == "paste_back"
    assert "no_paste_back" not in options.option_aliases("region")


def test_make_args_parser_is_built_once_and_not_changed_by_batch():
    from styleforge.batch import given_options

    assert options._parser("region") is options._parser("region")
    given_options("region", ["--strength", "0.5"])  # changes its own parser: nothing required, no defaults
    assert options.make_args("region", {"content": "a.png", "style": "s.png", "output": "o.png"}).strength == 1.0
    with pytest.raises(InputError, match="required: --content"):
        options.make_args("region", {"style": "s.png", "output": "o.png"})


@pytest.mark.parametrize("values, message", [
    ({"style": "s.png", "output": "o.png"}, "required: --content"),
    ({"content": "a.png", "style": "s.png", "output": "o.png", "strength": "strong"}, "--strength"),
    ({"content": "a.png", "style": "s.png", "output": "o.png", "composition": "mix"}, "--composition"),
    ({"content": "a.png", "style": "s.png", "output": "o.png", "paste_back": "maybe"}, "--paste-back"),
])
def test_bad_values_are_refused_with_the_parsers_message(values, message):
    with pytest.raises(InputError, match=message):
        options.make_args("region", values)


def test_run_method_writes_what_the_cli_writes_and_keeps_the_model(tmp_path, monkeypatch):
    from styleforge.region import inference

    loads = []
    original = inference.RegionStylizer.from_pretrained.__func__

    def counting(cls, *a, **k):
        loads.append(a)
        return original(cls, *a, **k)

    monkeypatch.setattr(inference.RegionStylizer, "from_pretrained", classmethod(counting))
    common.keep_models(True)
    try:
        for i in range(2):
            options.run_method("region", {**EXAMPLES, "size": 64, "strip": "false", "output": str(tmp_path / f"{i}.png")})
        assert len(loads) == 1 and len(common.loaded_models()) == 1
    finally:
        common.keep_models(False)
    assert common.loaded_models() == []
    from styleforge.cli.main import main

    assert main(["region", "apply", *sum((["--" + k, v] for k, v in EXAMPLES.items()), []), "--size", "64",
                 "--strip", "false", "-o", str(tmp_path / "cli.png")]) == 0
    assert (tmp_path / "cli.png").read_bytes() == (tmp_path / "0.png").read_bytes() == (tmp_path / "1.png").read_bytes()
    assert read_metadata(tmp_path / "0.png")["method"] == "region"


def test_unknown_method():
    with pytest.raises(InputError, match="unknown method"):
        options.method_options("nope")
    assert isinstance(options.command_parser("translate"), argparse.ArgumentParser)
