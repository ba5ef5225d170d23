"""The same step on two images side by side (the fixed and the moving image's masks, crops,
shrunk copies): SimpleITK's filters and numpy's large operations release the GIL, and most
of ITK's filters that such steps use keep fewer than two cores busy on their own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from .interrupts import interrupts_held

T = TypeVar("T")
R = TypeVar("R")


def side_by_side(function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[function(item) for item in items]``, on as many threads at once as torch's thread
    count allows (one after the other with one thread, as ``progreg batch`` workers of one
    thread run). The results are those of the loop; the first exception raised is raised.
    An interruption (Ctrl-C, SIGTERM) that arrives meanwhile is raised once the threads are done."""
    workers = min(len(items), max(1, torch.get_num_threads()))
    if workers <= 1:
        return [function(item) for item in items]
    with interrupts_held(), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))
