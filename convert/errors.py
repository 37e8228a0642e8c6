"""Errors the converter raises; each message says what was read, what was expected, and what to do.

All derive from `ConversionError`, so the CLI can print one line instead of a traceback.
"""

from __future__ import annotations


class ConversionError(Exception):
    """Base class: a checkpoint that cannot be converted as asked."""


class CheckpointReadError(ConversionError):
    """The file cannot be read: missing, truncated, corrupt, or not a checkpoint at all."""


class UnsafeCheckpointError(ConversionError):
    """The file holds pickled Python objects or TorchScript code; loading it would run that code."""


class UnknownFormatError(ConversionError):
    """The tensors match none of the supported source formats."""


class UnknownVariantError(ConversionError):
    """Stem width, head width and blocks per stage match no EfficientNet variant."""


class KeyMismatchError(ConversionError):
    """Keys missing, unexpected, or with the wrong shape for the detected format and variant.

    Attributes:
      missing: (torch key, expected shape) pairs.
      unexpected: torch keys that nothing consumed.
      mismatched: (torch key, expected shape, found shape) triples.
    """

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
