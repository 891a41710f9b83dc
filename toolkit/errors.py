"""The few exception classes rtool raises on purpose.

The CLI turns each into one line on stderr and an exit code, so a user never
sees a traceback for a problem they can fix.
"""


class RtoolError(Exception):
    """Base class: something the user can act on. Exit code 2 (bad input)."""

    exit_code = 2


class BadInputError(RtoolError):
    """A file, name, flag or data set that rtool cannot use as given."""


class UnavailableError(RtoolError):
    """A runtime, format or device that cannot run on this machine (says why)."""


class UnsafeFileError(BadInputError):
    """A file rtool refuses to read because reading it could run code or escape its folder."""


class CheckFailedError(RtoolError):
    """A check ran and failed (e.g. a parity threshold). Exit code 1."""

    exit_code = 1
