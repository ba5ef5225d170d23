"""The same step on two images side by side (the fixed and the moving image's masks, crops,
shrunk copies): SimpleITK's filters and numpy's large operations release the GIL, and most
of ITK's filters that such steps use keep fewer than two cores busy on their own."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

# The signals whose Python handlers raise (Ctrl-C's KeyboardInterrupt, the command line's SIGTERM).
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back until the block is left, then handled by their own handlers
    (on the main thread, where Python runs signal handlers; elsewhere nothing is held).

    Why: Python raises a signal's exception wherever the main thread happens to be. Raised while
    a worker thread is being started, it leaves that thread running outside the pool, which
    neither the pool nor the interpreter's exit then waits for; a SimpleITK call that the thread
    is in when the interpreter shuts down aborts the process ("FATAL: exception not rethrown",
    SIGABRT) instead of exiting with the interruption's code. Held back, the exception is
    raised when every worker is done; the wait is one step of the work (a second or so).
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


def side_by_side(function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[function(item) for item in items]``, on as many threads at once as torch's thread
    count allows (one after the other with one thread, as ``progreg batch`` workers of one
    thread run). The results are those of the loop; the first exception raised is raised.
    An interruption (Ctrl-C, SIGTERM) that arrives meanwhile is raised once the threads are done."""
    workers = min(len(items), max(1, torch.get_num_threads()))
    if workers <= 1:
        return [function(item) for item in items]
    with _interrupts_held(), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))
