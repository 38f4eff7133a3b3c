"""Flags shared by every subcommand, and the conversion of parsed flags into runtime objects.

Subcommand modules import nothing heavy at import time so that ``styleforge --help`` stays instant; torch and
diffusers are imported inside ``run``.
"""

from __future__ import annotations

import argparse
from argparse import BooleanOptionalAction
from typing import Any, Callable

from .. import validation as V
from ..validation import fraction_pair, int_pair  # noqa: F401  (START,END options of several commands)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
DTYPE_HELP = "weights and activations precision; auto = fp16 on a CUDA GPU, fp32 elsewhere"


class Parser(argparse.ArgumentParser):
    """An argument parser whose refusals are one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]
        where = f"{command}: " if command else ""
        self.exit(2, f"styleforge: error: {where}{message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the description's line breaks."""


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    model_default: str | None,
    model_help: str = "Hugging Face hub id or local model folder",
    output_required: bool = True,
    output_help: str = "output PNG file",
    seed_default: int | None = 0,
    dtype_default: str = "auto",  # training commands pass "fp32"
) -> None:
    g = parser.add_argument_group("common options")
    g.add_argument("--model", default=model_default, help=model_help)
    g.add_argument("--device", choices=DEVICES, default="auto", help="where to run; auto picks cuda, then mps, then cpu")
    g.add_argument("--dtype", choices=DTYPES, default=dtype_default, help=DTYPE_HELP)
    g.add_argument("--seed", type=int, default=seed_default, help="random seed (results are reproducible per seed)")
    g.add_argument("-o", "--output", required=output_required, help=output_help)
    g.add_argument("--overwrite", action=BooleanOptionalAction, default=False, help="replace existing output files")
    g.add_argument("--offline", action=BooleanOptionalAction, default=False, help="never contact the hub; use local files only (also HF_HUB_OFFLINE=1)")


def add_size_args(group, side: str = "shorter") -> None:
    """--size and --crop: the aspect ratio is kept unless --crop asks for the centre square."""
    group.add_argument("--size", type=V.side, default=None,
                       help=f"{side} side of the working size, aspect ratio kept (default: the model's resolution, 512 "
                            "for SD 1.5); with --crop the square's side")
    group.add_argument("--crop", action=BooleanOptionalAction, default=False,
                       help="centre-crop to a square (the old behaviour) instead of keeping the aspect ratio")


def size_from_args(args, pipe):
    """The ``size`` a pipeline takes for --size/--crop: a (side, side) square with --crop, else --size."""
    if not args.crop:
        return args.size
    side = args.size or pipe.default_resolution
    return (side, side)


def add_subcommand(subparsers, name: str, *, help: str, description: str | None = None) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)


def str2bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


OFFLOAD_CHOICES = ("none", "model", "sequential")  # styleforge.diffusion.memory.OFFLOAD_MODES (kept import-free)
#: the memory flags' destinations, in MemorySavers' keyword names
MEMORY_OPTIONS = ("low_memory", "offload", "vae_slicing", "vae_tiling", "vae_tile_size", "attention_chunk_size",
                  "gradient_checkpointing")


def add_memory_args(parser: argparse.ArgumentParser, *, offload: tuple[str, ...] | None = OFFLOAD_CHOICES,
                    vae: bool | str = True, attention_chunking: bool = False, checkpointing: str | None = None) -> None:
    """The memory-saver flags, one family for every command; a command leaves out what does not apply to it.

    ``vae``: True for slicing and tiling, ``"slicing"`` for slicing only (a command that only encodes small batches).
    ``checkpointing`` is the help text of ``--gradient-checkpointing`` (None: the command has no backward pass).
    Every flag defaults to None ("not given") so that ``--low-memory`` can fill in the rest; ``--no-X`` turns a saver
    off even under ``--low-memory``.
    """
    g = parser.add_argument_group("memory savers (exact unless noted; --low-memory: the set that fits an 8 GB GPU)")
    g.add_argument("--low-memory", action=BooleanOptionalAction, default=False,
                   help="turn on every saver below that this command has (model offload, VAE slicing and tiling, "
                        "1024-row attention chunks, gradient checkpointing); explicit flags still win")
    if offload:
        g.add_argument("--offload", choices=offload, default=None,
                       help="keep weights on the CPU: one whole model on the GPU at a time (model), or one layer "
                            "(sequential: least memory, slowest). Default: none")
    if vae:
        g.add_argument("--vae-slicing", action=BooleanOptionalAction, default=None,
                       help="encode and decode one image of a batch at a time")
    if vae is True:
        g.add_argument("--vae-tiling", action=BooleanOptionalAction, default=None,
                       help="encode and decode in overlapping tiles (approximate: tiles are blended; only for images "
                            "larger than a tile)")
        g.add_argument("--vae-tile-size", type=V.side, default=None, help="tile side in pixels (default: the VAE's, 512 for SD 1.5)")
    if attention_chunking:
        g.add_argument("--attention-chunk-size", type=V.count, default=None,
                       help="compute explicit attention maps this many query rows at a time (exact)")
    if checkpointing:
        g.add_argument("--gradient-checkpointing", action=BooleanOptionalAction, default=None, help=checkpointing)


def memory_options(args) -> dict:
    """The memory flags a command was given, as keywords of ``enable_memory_savers`` (absent flags left out).

    ``--low-memory`` only turns on the savers the command has: one it lacks (e.g. VAE tiling while training) stays off.
    """
    opts = {k: getattr(args, k) for k in MEMORY_OPTIONS if getattr(args, k, None) is not None}
    if opts.get("low_memory"):
        lacking = {"offload": "none", "vae_slicing": False, "vae_tiling": False, "gradient_checkpointing": False}
        opts.update({k: v for k, v in lacking.items() if not hasattr(args, k)})
    return opts


def memory_savers(args):
    """The :class:`~styleforge.diffusion.memory.MemorySavers` the flags ask for."""
    from ..diffusion.memory import MemorySavers

    return MemorySavers.from_options(**memory_options(args))


def dataclass_defaults(cls) -> argparse.Namespace:
    """The field defaults of a settings dataclass, without running its validation (which may import torch)."""
    import dataclasses

    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return argparse.Namespace(**values)


def load_pipeline(cls, args):
    """``cls.from_pretrained(...).to(device)`` from the common flags (--model --dtype --device --offline), memory
    savers installed.

    With offload the weights stay on the CPU and only the offload hooks point at the device.
    """
    from ..runtime import resolve_device

    savers = memory_savers(args)
    offloading = savers.offload != "none"

    def load():
        from ..runtime import resolve_dtype

        pipe = cls.from_pretrained(args.model, torch_dtype=resolve_dtype(args.dtype, args.device), offline=args.offline or None)
        if not offloading:
            pipe.to(resolve_device(args.device))
        if savers != type(savers)():
            pipe.enable_memory_savers(**memory_options(args), device=resolve_device(args.device))
        return pipe

    return cached_model((cls.__qualname__, args.model, args.dtype, args.device, bool(args.offline), savers), load)


# Models kept loaded between commands run in one process (the batch runner and the web page turn this on; a
# command-line call runs one command, so it loads its model once anyway).
_MODELS: dict[tuple, Any] = {}
_KEEP = {"on": False}


def keep_models(on: bool = True) -> None:
    """Keep every model a command loads, keyed by what it was loaded from, for the next command in this process."""
    _KEEP["on"] = on
    if not on:
        unload_models()


def cached_model(key: tuple, load: Callable[[], Any]) -> Any:
    """``load()``, or the object an earlier command loaded under ``key`` while :func:`keep_models` is on."""
    if not _KEEP["on"]:
        return load()
    if key not in _MODELS:
        _MODELS[key] = load()
    return _MODELS[key]


def loaded_models() -> list[tuple]:
    return list(_MODELS)


def unload_models() -> None:
    """Drop every kept model (and free the GPU memory they held)."""
    _MODELS.clear()
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
