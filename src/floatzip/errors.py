"""floatzip's error types: one root, one subclass per family of failure.

Every error a user can cause (a missing file, a corrupt byte, an unknown version) is a
:class:`FloatzipError`; the CLI prints it as one line and exits with status 2.
"""

from __future__ import annotations


class FloatzipError(Exception):
    """Root of every error floatzip raises on purpose."""


class InputError(FloatzipError):
    """The caller's input is not something floatzip can work on (missing path, wrong dtype, ...)."""


class FormatError(FloatzipError):
    """A file or blob does not follow the floatzip format (bad magic, bad sizes, truncated)."""


class VersionError(FormatError):
    """A format version this build of floatzip does not know."""


class IntegrityError(FormatError):
    """The bytes are well-formed but do not decode to what was stored (checksum, stream mismatch)."""


class BackendError(FloatzipError):
    """A decode backend is unknown or cannot run here (no GPU, no Triton)."""
