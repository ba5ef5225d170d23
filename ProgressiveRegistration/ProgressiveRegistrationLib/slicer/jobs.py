"""A command in a background process, read without blocking: what Slicer's module polls
with a timer (Qt-free, so that it is tested as it runs).

The child reports progress as JSON lines on stdout (``progreg register --progress-json``);
everything it writes on stderr is kept, line by line, for the log. Cancelling kills the
whole process tree (a ``PythonSlicer`` launcher starts the real Python process as its
child, so killing the launcher alone leaves an orphan that goes on writing), and the
work folder is removed only once every process in the tree has ended.

On Windows no process started here opens a console window: they are started hidden, as
Slicer's own ``slicer.util.launchConsoleProcess`` (Base/Python/slicer/util.py, Slicer v5.6.2
to v5.10.0) and SlicerElastix (``getStartupInfo``) start theirs.

The module's other process-side helpers are here too, because they import nothing: how a
phase is named in a job's command line (:func:`phase_label`) and keeping a job's result
files (:func:`keep_results`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def hidden_window_options() -> dict:
    """Keyword arguments for ``subprocess.Popen``/``run`` that start a console program without
    a console window: on Windows ``STARTUPINFO`` with ``STARTF_USESHOWWINDOW`` and
    ``SW_HIDE`` (the flags ``slicer.util.launchConsoleProcess`` sets; Slicer's GUI has no
    console, so Windows would open one per process); elsewhere nothing."""
    if sys.platform != "win32":
        return {}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= getattr(subprocess, "STARTF_USESHOWWINDOW", 1)
    info.wShowWindow = getattr(subprocess, "SW_HIDE", 0)
    return {"startupinfo": info}


def child_pids(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children first, then theirs)."""
    try:
        import psutil

        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
    except ImportError:
        pass
    if sys.platform == "win32":  # pragma: no cover - taskkill /T handles the tree itself
        return []
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        r = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True, **hidden_window_options())
        kids = [int(v) for v in r.stdout.split()]
        found += kids
        frontier += kids
    return found


def kill_process_tree(pid: int, timeout_s: float = 5.0) -> None:
    """Kill ``pid`` and all its descendants, and wait (up to ``timeout_s``) until the
    descendants are gone (``pid`` itself is left for its parent to reap)."""
    if sys.platform == "win32":  # pragma: no cover
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, **hidden_window_options())
        return
    victims = [*child_pids(pid), pid]
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        import psutil

        psutil.wait_procs([psutil.Process(p) for p in victims[:-1] if psutil.pid_exists(p)], timeout=timeout_s)
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - a process that ended between the calls
        pass


@dataclass
class Poll:
    """What one poll found: progress events ``(fraction, message)`` and new stderr lines."""

    progress: list[tuple[float, str]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


class BackgroundJob:
    """Runs ``args`` (a full command line) in a child process.

    ``poll()`` returns what arrived since the last call and never blocks; ``finished`` and
    ``returncode`` tell how it ended; ``error()`` is the message for the user. ``work_dir``
    (if given) is removed by ``cleanup()`` (once the results are read) or ``cancel()``
    (after the processes are gone), and at once if the process cannot be started (the
    error, e.g. ``FileNotFoundError`` for a missing program, is raised).
    """

    def __init__(self, args: list[str], env: dict | None = None, cwd: str | None = None,
                 work_dir: str | os.PathLike | None = None):
        self.args = [str(a) for a in args]
        self.work_dir = Path(work_dir) if work_dir else None
        self.stderr_lines: list[str] = []
        self.cancelled = False
        self._lines: queue.Queue = queue.Queue()
        log.info("starting: %s", " ".join(self.args))
        try:
            self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                            cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
                                            **hidden_window_options())
        except Exception:
            self.cleanup()  # nothing runs that could still use it
            raise
        self._readers = [threading.Thread(target=self._read, args=(stream, name), daemon=True)
                         for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr"))]
        for t in self._readers:
            t.start()

    def _read(self, stream, name: str) -> None:
        for line in stream:
            self._lines.put((name, line.rstrip("\n")))
        stream.close()

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def finished(self) -> bool:
        """The process has ended and everything it wrote has been read."""
        return self.process.poll() is not None and not any(t.is_alive() for t in self._readers) and self._lines.empty()

    def poll(self) -> Poll:
        found = Poll()
        while True:
            try:
                name, line = self._lines.get_nowait()
            except queue.Empty:
                break
            if name == "stdout":
                try:
                    event = json.loads(line)
                    found.progress.append((float(event.get("fraction", 0.0)), str(event.get("message", ""))))
                    continue
                except (ValueError, AttributeError, TypeError):
                    pass  # not a progress line: log it
            if name == "stderr":
                self.stderr_lines.append(line)
            found.log.append(line)
            log.debug("%s", line)
        return found

    def error(self) -> str | None:
        """None after success; else the child's own error line, or how it ended."""
        if self.cancelled:
            return "cancelled"
        code = self.returncode
        if code is None or code == 0:
            return None
        errors = [ln for ln in self.stderr_lines if "error:" in ln]
        if errors:
            return errors[-1]
        if code < 0:
            return f"the registration process was killed by signal {-code}"
        tail = [ln for ln in self.stderr_lines if ln.strip()][-1:]
        return f"the registration process failed (exit code {code})" + (f": {tail[0]}" if tail else "")

    def cancel(self) -> None:
        """Kill the whole process tree, then remove the work folder."""
        if self.process.poll() is None:
            self.cancelled = True
            log.info("cancelling process %d and its children", self.process.pid)
            kill_process_tree(self.process.pid)
            self.process.wait()
        for t in self._readers:
            t.join(timeout=2.0)
        self.cleanup()

    def cleanup(self) -> None:
        if self.work_dir is not None and self.work_dir.exists():
            shutil.rmtree(self.work_dir, ignore_errors=True)


def phase_label(index_value: str, index_unit: str = "", index_name: str = "") -> str:
    """How a phase of a Sequence is named (in the panel, the phase table, the figure and the
    output nodes): as the sequence names it, by its index value and unit (``"50 %"``,
    ``"0.4 s"``, ``"T50"``). A bare number without a unit gets the index's name before it
    (``"phase 3"``), so that it does not read as a position in the list."""
    value, unit = str(index_value).strip(), (index_unit or "").strip()
    if unit:
        return f"{value} {unit}"
    try:
        float(value)
    except ValueError:
        return value
    return f"{index_name.strip()} {value}".strip() if index_name else value


def _dated_name(name: str) -> str:
    """``name`` made safe for a file name, with the date and time: ``"<name> 2026-12-03 170112"``."""
    safe = "".join(ch if ch.isalnum() or ch in " ._-" else "_" for ch in name).strip() or "registration"
    return f"{safe} {time.strftime('%Y-%m-%d %H%M%S')}"


def keep_results(out_dir: str | os.PathLike, destination: str | os.PathLike, name: str) -> Path:
    """Move a finished job's output folder to ``destination/<name> <date time>`` (a new
    folder, never an existing one) before its work folder is removed; returns the new path."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    stem = _dated_name(name)
    target, n = destination / stem, 1
    while target.exists():
        n += 1
        target = destination / f"{stem} ({n})"
    shutil.move(str(out_dir), str(target))
    return target


def keep_report(out_dir: str | os.PathLike, destination: str | os.PathLike, name: str) -> str:
    """Copy a finished job's ``report.html`` to ``destination/<name> <date time>.html`` (a new
    file) before its work folder is removed; returns the new path."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    stem = _dated_name(name)
    target, n = destination / f"{stem}.html", 1
    while target.exists():
        n += 1
        target = destination / f"{stem} ({n}).html"
    shutil.copyfile(Path(out_dir) / "report.html", target)
    return str(target)
