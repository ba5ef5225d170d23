"""Ctrl-C and SIGTERM held back while threads of ours start and run (no torch here: the
output writers use it too)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The signals whose Python handlers raise (Ctrl-C's KeyboardInterrupt, the command line's SIGTERM).
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back until the block is left, then handled by their own handlers
    (on the main thread, where Python runs signal handlers; elsewhere nothing is held).

    Why: Python raises a signal's exception wherever the main thread happens to be. Raised while
    a worker thread is being started, it leaves that thread running outside the pool, which
    neither the pool nor the interpreter's exit then waits for; a SimpleITK call that the thread
    is in when the interpreter shuts down aborts the process ("FATAL: exception not rethrown",
    SIGABRT) instead of exiting with the interruption's code. Held back, the exception is
    raised when every worker is done: after the step under way (up to a few seconds, a full
    chest's masks). Further signals meanwhile count as one.
    The Python handlers are swapped, not the signals blocked: a blocked signal still reaches
    the process through any other thread (torch's and numba's worker threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    handlers = {}
    try:
        for signum in _INTERRUPTS:
            handler = signal.getsignal(signum)
            if callable(handler):
                handlers[signum] = handler
                signal.signal(signum, lambda signum, frame: held.append(signum))
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in held[:1]:  # the first: it ends the work as it would have
            handlers[signum](signum, None)
