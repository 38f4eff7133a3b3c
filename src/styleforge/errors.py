"""User-facing errors.

Every error a user can cause (a bad image, a missing model, an output that already exists) is a
:class:`StyleforgeError`. The CLI prints its message on one line and exits with status 2; Python callers
can catch the specific subclass.
"""


class StyleforgeError(Exception):
    """An error whose message is written for the user, not the developer."""

    exit_code = 2


class InputError(StyleforgeError, ValueError):
    """An input (image, mask, file, argument) that cannot be used."""


class ModelNotFoundError(StyleforgeError):
    """Weights that are absent, unreachable, or not a model of the expected kind."""


class OutputError(StyleforgeError):
    """An output that cannot be written (exists, would overwrite an input, disk full)."""


class TrainingDiverged(StyleforgeError):
    """A training run whose loss or weights became NaN or infinite (stopped before saving them)."""


def _shown_path(path) -> str:
    """A temporary sibling ``.NAME.XXXX.tmp`` is reported as the file it stands for."""
    import re
    from pathlib import Path

    p = Path(str(path))
    m = re.fullmatch(r"\.(.+)\.[^.]+\.tmp(dir)?", p.name)
    return str(p.with_name(m.group(1))) if m else str(p)


#: errno name -> the plain words for it ({} is the file)
_OS_ERRORS = {
    "EROFS": "cannot write {}: read-only file system",
    "ENOSPC": "no space left on device while writing {} (nothing was written)",
    "EDQUOT": "disk quota exceeded while writing {} (nothing was written)",
    "EFBIG": "file size limit exceeded while writing {} (nothing was written)",
    "EACCES": "permission denied: {}",
    "EPERM": "permission denied: {}",
    "ENOTDIR": "{}'s parent is a file, not a folder",
    "ENAMETOOLONG": "file name too long: {}",
    "ENOENT": "no such file or folder: {}",
    "EISDIR": "{} is a folder, not a file",
    "ENOMEM": "out of memory while working on {}: try a smaller --size or --batch-size",
}


def os_error_message(error: OSError, path=None) -> str:
    """One plain line for an OS error met while reading or writing ``path`` (default: the error's own file name)."""
    import errno

    where = _shown_path(path if path is not None else (error.filename or "the output"))
    name = errno.errorcode.get(error.errno or -1, "")
    if name == "EEXIST" and path is None:  # mkdir where a file is: the folder to create is a file
        return f"{where} is a file, not a folder"
    if name in _OS_ERRORS:
        return _OS_ERRORS[name].format(where)
    reason = (error.strerror or str(error) or "input/output error").lower()
    return f"{reason}: {where}"


#: Words of the non-OSError exceptions that libraries raise when a write fails (safetensors, torch.save).
_WRITE_FAILURES = (("no space left", "ENOSPC"), ("file too large", "EFBIG"), ("read-only file system", "EROFS"),
                   ("disk quota", "EDQUOT"), ("write failed", "EIO"), ("failed writing", "EIO"), ("i/o error", "EIO"))


def write_failure_message(error: BaseException, path) -> str | None:
    """The one-line message for a failed write of ``path``, or ``None`` if ``error`` is not a write failure."""
    import errno

    if isinstance(error, StyleforgeError):
        return None
    if isinstance(error, OSError) and error.errno is not None:
        return os_error_message(error, path)
    text = str(error).lower()
    for words, name in _WRITE_FAILURES:
        if words in text:
            if name == "EIO":
                return f"writing {_shown_path(path)} failed (is the disk full?); nothing was written"
            return os_error_message(OSError(getattr(errno, name), ""), path)
    return None
