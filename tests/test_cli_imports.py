"""`styleforge --help` (and every subcommand's help) must not import torch, diffusers or transformers."""

import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "numpy", "peft", "accelerate")

PROBE = r"""
import argparse, contextlib, io, sys
from styleforge.cli.main import build_parser, main

def walk(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from walk(sub)

with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(["--help"])
    except SystemExit:
        pass
    helps = [p.format_help() for p in walk(build_parser())]
assert "tiny-model" in out.getvalue() and len(helps) > 15, (len(helps), out.getvalue()[:200])
import styleforge, styleforge.pair_customization, styleforge.osasis, styleforge.cache
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)))
"""


def test_help_of_every_command_imports_nothing_heavy():
    code = f"HEAVY = {HEAVY!r}\n" + PROBE
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"--help imported: {done.stdout.strip()}"
