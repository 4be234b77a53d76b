"""Errors a user can act on.

Every error raised on purpose by the package derives from `SelvaError` and its
message says what went wrong and how to fix it, so the app and the command line
can show it as it is, without a stack trace.
"""


class SelvaError(Exception):
    """A problem the user can fix; the message names it and the fix."""


class InputError(SelvaError, ValueError):
    """An argument is out of range or of the wrong kind (prompt, steps, duration, variant...)."""


class MediaError(SelvaError):
    """A media file cannot be read or written as asked."""


class WeightsError(SelvaError):
    """Model weights are missing, corrupt or cannot be fetched."""
