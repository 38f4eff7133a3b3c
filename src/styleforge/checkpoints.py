"""Reading third-party ``torch.save`` checkpoints without running code from them.

``torch.load(weights_only=True)`` accepts tensors and plain containers only. Training frameworks pickle more: a
pytorch-lightning 1.x ``last.ckpt`` (DiffAE's release) keys its callback states by the callback *class*
(``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``), and other Lightning files carry omegaconf or
``argparse.Namespace`` hyper-parameters. Unpickling those for real needs the framework installed and executes
whatever the file names. Here such globals are replaced by inert stand-ins through torch's own allow-list
(``torch.serialization.safe_globals``): constructing, calling or restoring a stand-in only records its arguments,
and the stand-ins are dropped from the result, so only tensors and plain containers come back. A file naming any
other global is refused before anything is unpickled.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .errors import ModelNotFoundError

#: Modules whose pickled globals are training-framework bookkeeping, never weights.
INERT_MODULE_PREFIXES = ("pytorch_lightning.", "lightning.pytorch.", "lightning.fabric.", "lightning_fabric.",
                         "omegaconf.")
#: Single globals such files carry in their hyper-parameters or callback states.
INERT_GLOBALS = frozenset({
    "argparse.Namespace", "typing.Any", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.Path",
    # omegaconf's ContainerMetadata records Python types (object_type=dict, key_type=Any, ...)
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int", "builtins.float",
    "builtins.bool", "builtins.object",
})


class InertGlobal:
    """Stands for a pickled class or function: building, calling or restoring it records the arguments, runs nothing."""

    pickled_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.pickled_name}>"


def is_inert_global(name: str) -> bool:
    return name in INERT_GLOBALS or name.startswith(INERT_MODULE_PREFIXES)


def _stand_in(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (InertGlobal,), {"pickled_name": name, "__module__": __name__})


_DROP = object()


def _plain(obj: Any) -> Any:
    """``obj`` with every stand-in (class or instance) removed: tensors and plain containers only."""
    if isinstance(obj, InertGlobal) or (isinstance(obj, type) and issubclass(obj, InertGlobal)):
        return _DROP
    if type(obj) in (dict, OrderedDict):
        out = type(obj)()
        for k, v in obj.items():
            k, v = _plain(k), _plain(v)
            if k is not _DROP and v is not _DROP:
                out[k] = v
        return out
    if type(obj) in (list, tuple):
        return type(obj)(v for v in map(_plain, obj) if v is not _DROP)
    return obj  # tensors, torch.Size, numbers, strings: as loaded


def unsafe_globals(path: str | os.PathLike) -> list[str] | None:
    """The globals of a zip ``torch.save`` file that plain ``weights_only`` refuses (None: not a zip checkpoint)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) format, truncated file: let torch.load report it
        return None


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load`` of a third-party checkpoint on the CPU, safely: tensors and plain containers only.

    Framework bookkeeping (see :data:`INERT_MODULE_PREFIXES`, :data:`INERT_GLOBALS`) is read into inert stand-ins
    and dropped; any other pickled global raises :class:`ModelNotFoundError` naming it, before anything is loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{what} not found: {path}")
    found = unsafe_globals(path) or []
    refused = [g for g in found if not is_inert_global(g)]
    if refused:
        shown = ", ".join(refused[:3]) + (f" and {len(refused) - 3} more" if len(refused) > 3 else "")
        raise ModelNotFoundError(f"{path} is not a {what} that can be loaded safely: it pickles {shown}, which would "
                                 "run code on loading (unsafe); refusing it")
    stand_ins = [(_stand_in(g), g) for g in found]
    try:
        with torch.serialization.safe_globals(stand_ins):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated files, legacy pickles naming other globals, not a torch file at all
        # one line: torch's own multi-line text would suggest weights_only=False, the unsafe way
        raise ModelNotFoundError(f"{path} is damaged or not a {what} file (it cannot be read as a weights-only "
                                 "PyTorch file)") from None
    return _plain(obj) if stand_ins else obj
