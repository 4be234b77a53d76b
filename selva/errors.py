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


# torch raises plain RuntimeErrors when host memory (DefaultCPUAllocator) or MPS memory runs out.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Python's `MemoryError`, torch's `OutOfMemoryError` (CUDA), or torch's CPU and MPS messages.

    Such an error says nothing about the inputs or the files; callers must not
    report it as bad input or damaged weights.
    """
    if isinstance(exc, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True  # matched by name: this module does not import torch
    text = str(exc).lower()
    return any(m in text for m in _OOM_MESSAGES)
