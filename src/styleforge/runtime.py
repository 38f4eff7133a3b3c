"""Device, dtype and seed handling shared by the API and the CLI."""

from __future__ import annotations

import torch

from .errors import InputError

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is not available is refused."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but this PyTorch build sees no CUDA GPU")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for, but MPS is not available here")
    return torch.device(name)


def resolve_dtype(name: str | torch.dtype | None = "fp32", device: str | torch.device | None = None) -> torch.dtype:
    """``auto`` is half precision on a CUDA GPU (what diffusers users pass there) and fp32 elsewhere."""
    if isinstance(name, torch.dtype):
        return name
    if isinstance(name, str) and name.lower() == "auto":
        return torch.float16 if resolve_device(device).type == "cuda" else torch.float32
    try:
        return _DTYPES[(name or "fp32").lower()]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; use fp32, fp16 or bf16") from None


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed`` (None = nondeterministic, returns None)."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory so far: CUDA allocator high-water mark on a GPU, else the process's peak resident set."""
    import resource

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def stop_if_diverged(losses, iteration: int) -> None:
    """Stop a training run whose loss is NaN or infinite, before that step is applied or saved."""
    import math

    from .errors import TrainingDiverged

    items = losses.items() if hasattr(losses, "items") else [("training", losses)]
    bad = [name for name, value in items if not math.isfinite(float(value))]
    if bad:
        raise TrainingDiverged(f"training stopped at iteration {iteration}: the {', '.join(bad)} loss is not finite "
                               "(NaN or infinite), so nothing more was saved and the last good checkpoint is kept; "
                               "lower the learning rate or check the loss weights")


def stop_if_weights_diverged(tensors, iteration: int) -> None:
    """Refuse to save weights with NaN or infinite values (``tensors``: name -> tensor)."""
    from .errors import TrainingDiverged

    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            raise TrainingDiverged(f"training stopped at iteration {iteration}: weight {name} is not finite (NaN or "
                                   "infinite), so it was not saved and the last good checkpoint is kept; lower the "
                                   "learning rate, set a finite --max-grad-norm or check the loss weights")
