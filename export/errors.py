"""Errors of the exporter; the command maps them to exit statuses."""


class ExportError(ValueError):
    """An export that cannot be done as asked (bad option, unsupported model)."""


class OutputPathError(ExportError):
    """The output path cannot be written: it exists (without overwrite), is a directory, or
    its folder cannot be created or written."""


class VerificationError(ExportError):
    """The exported file's outputs differ from the Flax model's by more than the tolerance;
    nothing was left at the output path."""
