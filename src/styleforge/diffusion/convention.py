"""The one calling convention every styleforge pipeline follows (diffusers' own), as small shared pieces.

``Pipeline.from_pretrained(id_or_folder, torch_dtype=..., variant=...)`` (or ``dtype=``, diffusers 0.42's name)
then ``.to(device)``; a call takes inputs as PIL / numpy / tensor / path or lists of them, ``generator=`` (or
``seed=``), ``output_type`` in ``pil|np|pt|latent`` and ``callback_on_step_end(pipe, step, timestep,
callback_kwargs) -> dict`` with ``callback_on_step_end_tensor_inputs``; it returns a dataclass with ``.images``
plus the method's extras.
This module holds what would otherwise be written once per pipeline: output conversion, the step-end callback
call, batching of list inputs and the deprecation shims for the older keywords.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import InputError, OutputError

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


# --------------------------------------------------------------------------------------------- deprecations


def deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{old} is deprecated; use {new} (the diffusers convention)", DeprecationWarning, stacklevel=stacklevel)


def loading_keywords(torch_dtype=None, device=None, dtype=None) -> tuple[Any, Any]:
    """(dtype, device) from ``from_pretrained``'s keywords; the old ``device=`` warns.

    ``torch_dtype`` and ``dtype`` are synonyms (diffusers 0.42 renamed the first to the second), as torch dtypes or
    ``fp32|fp16|bf16``. The dtype stays None when nobody gave one, so loaders keep their own default. ``device`` is
    only returned for the old keyword: the convention is ``.to(device)``.
    """
    from ..runtime import resolve_dtype

    if torch_dtype is not None and dtype is not None and resolve_dtype(torch_dtype) != resolve_dtype(dtype):
        raise InputError(f"torch_dtype={torch_dtype!r} and dtype={dtype!r} disagree; give one of them")
    chosen = dtype if dtype is not None else torch_dtype
    if device is not None:
        deprecated("from_pretrained(device=...)", "from_pretrained(...).to(device)", stacklevel=4)
    return (resolve_dtype(chosen) if chosen is not None else None), device


def diffusers_dtype_keyword() -> str:
    """The name diffusers' ``from_pretrained`` takes the dtype under: ``dtype`` from 0.42 (where ``torch_dtype``
    warns), ``torch_dtype`` before."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"


def move_to(pipe, device):
    """``pipe.to(device)`` for the deprecated ``device=`` keyword ("auto" allowed, as it was)."""
    if device is None:
        return pipe
    from ..runtime import resolve_device

    return pipe.to(resolve_device(device))


def generator_for(generator: torch.Generator | None, seed: int | None, device: str = "cpu") -> torch.Generator:
    """The caller's generator, else one on ``device`` seeded with ``seed`` (a fresh random seed when None)."""
    if generator is not None:
        if isinstance(generator, (list, tuple)):
            raise InputError("pass one torch.Generator; lists of generators are not supported")
        return generator
    from ..runtime import make_generator

    return make_generator(seed if seed is not None else torch.seed(), device)


# --------------------------------------------------------------------------------------------- inputs


def is_batch(value) -> bool:
    """Lists/tuples of images, or a 4-D tensor/array holding more than one image."""
    if isinstance(value, (list, tuple)):
        return True
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 4:
        return value.shape[0] > 1
    return False


def as_items(value) -> list:
    """One input (path, PIL, array, tensor) or a batch of them as a list of single inputs."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 4:
        return [value[i:i + 1] for i in range(value.shape[0])]
    return [value]


def broadcast(*values) -> list[tuple]:
    """Items of several batched arguments zipped, a single value repeated (``None`` stays None)."""
    lists = [as_items(v) if is_batch(v) else None for v in values]
    n = {len(v) for v in lists if v is not None}
    if len(n) > 1:
        raise InputError(f"batched inputs have different lengths: {sorted(n)}")
    size = n.pop() if n else 1
    return list(zip(*[v if v is not None else [value] * size for v, value in zip(lists, values)]))


def per_image(**kwargs):
    """A dataclass field holding one entry per image (joined like ``images`` when list inputs are merged)."""
    return dataclasses.field(metadata={"per_image": True}, **kwargs)


def merge_outputs(outputs: Sequence[Any]):
    """Per-item outputs of one dataclass as one: ``images`` and the :func:`per_image` fields joined as a batch,
    every other extra a list with one entry per item."""
    first = outputs[0]
    if len(outputs) == 1:
        return first
    merged = {}
    for f in dataclasses.fields(first):
        values = [getattr(o, f.name) for o in outputs]
        merged[f.name] = join_images(values) if f.name == "images" or f.metadata.get("per_image") else values
    return type(first)(**merged)


def join_images(batches: Sequence[Any]):
    if all(b is None for b in batches):
        return None
    if isinstance(batches[0], list):
        return [img for b in batches for img in b]
    if len({tuple(b.shape[1:]) for b in batches}) > 1:
        raise InputError("the batched results have different sizes; use output_type='pil' or one call per input")
    return np.concatenate(batches) if isinstance(batches[0], np.ndarray) else torch.cat(batches)


# --------------------------------------------------------------------------------------------- outputs


def check_output_type(output_type: str, *, has_latents: bool = True) -> None:
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}")
    if output_type == "latent" and not has_latents:
        raise InputError("output_type='latent' needs a latent-space method; this one works on pixels "
                         "(use 'pil', 'np' or 'pt')")


def postprocess(images: torch.Tensor, output_type: str):
    """(B, 3, H, W) images in [-1, 1] as diffusers returns them: PIL list, (B, H, W, 3) float32 array in [0, 1]
    (``np``) or (B, 3, H, W) float32 tensor in [0, 1] (``pt``). NaNs are refused, never returned as black."""
    if output_type == "pil":
        from ..io import tensor_to_pil

        return tensor_to_pil(images)
    images = images.detach().float()
    if not torch.isfinite(images).all():
        raise OutputError("the result contains NaN or infinite values (often fp16 overflow): try --dtype fp32 or bf16")
    images = (images.clamp(-1, 1) + 1) / 2
    if output_type == "pt":
        return images
    if output_type == "np":
        return images.permute(0, 2, 3, 1).cpu().numpy()
    raise InputError(f"output_type {output_type!r} is not an image type")


# --------------------------------------------------------------------------------------------- callbacks


class StepEnd:
    """diffusers' ``callback_on_step_end`` for one call: checks the names once, then hands over the requested
    tensors after every step and returns what the callback gave back (tensors to replace, by name).

    Also takes the older ``callback=`` function, with a DeprecationWarning; ``legacy(callback, step, timestep,
    tensors)`` calls it the way the pipeline used to.
    """

    def __init__(self, pipe, callback_on_step_end: Callable | None, tensor_inputs: Sequence[str] | None,
                 callback: Callable | None = None, legacy: Callable | None = None):
        self.pipe = pipe
        self.fn = callback_on_step_end
        allowed = list(getattr(pipe, "_callback_tensor_inputs", []))
        if self.fn is not None and hasattr(self.fn, "tensor_inputs"):  # diffusers' PipelineCallback objects
            tensor_inputs = self.fn.tensor_inputs
        self.names = list(tensor_inputs if tensor_inputs is not None else allowed[:1])
        unknown = [n for n in self.names if n not in allowed]
        if self.fn is not None and unknown:
            raise InputError(f"callback_on_step_end_tensor_inputs {unknown} are not available; "
                             f"this pipeline offers {allowed}")
        if self.fn is not None and not callable(self.fn):
            raise InputError("callback_on_step_end must be callable (pipe, step, timestep, callback_kwargs) -> dict")
        self.legacy_fn = callback
        self.legacy = legacy
        if callback is not None:
            deprecated("callback=", "callback_on_step_end=", stacklevel=4)

    def __bool__(self) -> bool:
        return self.fn is not None or self.legacy_fn is not None

    def __call__(self, step: int, timestep, **tensors) -> dict:
        """Call after a step with every tensor the pipeline offers; returns the replacements (may be empty)."""
        if self.legacy_fn is not None:
            self.legacy(self.legacy_fn, step, timestep, tensors)
        if self.fn is None:
            return {}
        result = self.fn(self.pipe, step, timestep, {n: tensors[n] for n in self.names})
        if result is None:
            return {}
        if not isinstance(result, dict):
            raise InputError(f"callback_on_step_end must return a dict of tensors, got {type(result).__name__}")
        return result


def call_per_item(pipe, params: dict, names: Sequence[str]):
    """``pipe(...)`` once per item of the batched arguments ``names`` (other arguments as given); one output.

    ``params`` is the caller's ``locals()`` at the top of ``__call__``: its arguments, by name.
    """
    rest = {k: v for k, v in params.items() if k not in names and k not in ("self", "__class__")}
    items = broadcast(*(params[n] for n in names))
    return merge_outputs([pipe(**dict(zip(names, item)), **rest) for item in items])
