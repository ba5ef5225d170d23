"""The same step on two images side by side: the loop's results, at once where threads allow."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from ProgressiveRegistrationLib.core.parallel import side_by_side


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_two_threads_run_both_at_once_and_keep_the_order(threads):
    threads(2)
    barrier = threading.Barrier(2, timeout=10)  # both calls must be running at the same time to pass it

    def step(x):
        barrier.wait()
        return x * 10, threading.get_ident()

    results = side_by_side(step, (1, 2))
    assert [r for r, _ in results] == [10, 20]
    assert results[0][1] != results[1][1]


def test_one_thread_runs_them_one_after_the_other_on_the_callers_thread(threads):
    threads(1)
    results = side_by_side(lambda x: (x + 1, threading.get_ident()), (1, 2, 3))
    assert [r for r, _ in results] == [2, 3, 4]
    assert {ident for _, ident in results} == {threading.get_ident()}


def test_an_exception_reaches_the_caller(threads):
    threads(2)

    def step(x):
        if x == 2:
            raise ValueError("moving image: no lungs")
        return x

    with pytest.raises(ValueError, match="no lungs"):
        side_by_side(step, (1, 2))


@pytest.mark.skipif(os.name == "nt", reason="os.kill with SIGTERM ends the process on Windows")
def test_an_interruption_while_a_worker_starts_leaves_no_thread_running(threads, monkeypatch):
    """SIGTERM raised (as the command line's handler does) just as a worker thread has started:
    held back, it reaches the caller once every worker is done. Raised there, it would leave the
    thread outside the pool, still running when the interpreter exits (a SimpleITK call in it
    then aborts the process)."""
    threads(2)

    class Interrupted(KeyboardInterrupt):
        pass

    def handler(signum, frame):
        raise Interrupted

    start = threading.Thread.start

    def start_then_signal(thread):  # the signal arrives while the pool starts its workers
        start(thread)
        os.kill(os.getpid(), signal.SIGTERM)

    finished = []

    def step(x):
        time.sleep(0.3)
        finished.append(x)
        return x

    monkeypatch.setattr(threading.Thread, "start", start_then_signal)
    before = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Interrupted):
            side_by_side(step, (1, 2))
        alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    finally:
        signal.signal(signal.SIGTERM, before)
    assert alive == [] and sorted(finished) == [1, 2], (alive, finished)
