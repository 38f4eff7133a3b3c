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
