"""A stand-in for Hugging Face's `spaces` package (third-party; installed only on Spaces), for
tests/test_zerogpu.py, which puts this folder on sys.path. It records every call and does what
the real helpers are documented to do, on the CPU and without AOTInductor:

- `GPU(duration=...)` runs the function in this process (the real one forks onto a GPU);
- `aoti_capture(module)` records the first call of `module.forward`, then stops the caller's pass;
- `aoti_compile(exported)` returns the exported program's module: the traced graph, run eagerly
  (the real one compiles it with AOTInductor);
- `aoti_apply(compiled, module)` sets `module.forward` (the real one also empties its parameters).
"""

import contextlib
from types import SimpleNamespace

calls: list[tuple] = []


def GPU(fn=None, *, duration=None):  # noqa: N802 - the package's name
    def wrap(f):
        calls.append(("GPU", duration))
        return f

    return wrap(fn) if fn is not None else wrap


class _Captured(Exception):
    pass


@contextlib.contextmanager
def aoti_capture(module, call_method="forward"):
    call = SimpleNamespace(args=(), kwargs={})
    had_own = call_method in vars(module)
    original = getattr(module, call_method)

    def capture(*args, **kwargs):
        call.args, call.kwargs = args, kwargs
        raise _Captured

    setattr(module, call_method, capture)
    calls.append(("aoti_capture", type(module).__name__))
    try:
        yield call
    except _Captured:
        pass
    finally:
        if had_own:
            setattr(module, call_method, original)
        else:
            delattr(module, call_method)


def aoti_compile(exported, inductor_configs=None):
    calls.append(("aoti_compile", tuple(exported.example_inputs[0][0].shape)))
    return exported.module()


def aoti_apply(compiled, module, call_method="forward"):
    calls.append(("aoti_apply", type(module).__name__))
    setattr(module, call_method, compiled)
