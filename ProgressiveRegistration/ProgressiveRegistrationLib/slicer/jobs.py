"""A command in a background process, read without blocking: what Slicer's module polls
with a timer (Qt-free, so that it is tested as it runs).

The child reports progress as JSON lines on stdout (``progreg register --progress-json``);
everything it writes on stderr is kept, line by line, for the log. The child writes and
is read as UTF-8 (``PYTHONIOENCODING``, ``PYTHONUTF8``): left to itself, Python on Windows
writes its pipes in the ANSI code page. Cancelling kills the whole process tree (a
``PythonSlicer`` launcher starts the real Python process as its child, so killing the
launcher alone leaves an orphan that goes on writing), waits until every process of the
tree has ended (``taskkill /F /T`` returns before they have), and only then removes the
work folder, retrying while Windows still holds its files open.

Work folders are named with :data:`WORK_DIR_PREFIX` and say which processes use them
(:func:`claim_work_dir`): a folder left behind (Slicer ended during a run, a file that
stayed locked) is removed by :func:`sweep_stale_work_dirs` once none of them runs.

On Windows no process started here opens a console window: they are started hidden, as
Slicer's own ``slicer.util.launchConsoleProcess`` (Base/Python/slicer/util.py, Slicer v5.6.2
to v5.10.0) and SlicerElastix (``getStartupInfo``) start theirs.

The module's other process-side helpers are here too, because they import nothing: how a
phase is named in a job's command line (:func:`phase_label`), keeping a job's result
files (:func:`keep_results`) and the device a run gets (:func:`default_device`).
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

#: What the module's work folders are named with (``slicer.util.tempDirectory(WORK_DIR_PREFIX)``
#: adds the date and time): :func:`sweep_stale_work_dirs` looks at these only.
WORK_DIR_PREFIX = "ProgressiveRegistration-"
#: The file in a work folder that lists the processes using it (JSON: ``{"pids": [...]}``).
OWNER_FILE = ".progreg-owner.json"
#: A work folder without an owner file (written before owner files were) is stale after this long.
UNOWNED_STALE_S = 24 * 3600.0
#: The child's output encoding: UTF-8 whatever the system's code page (it is read as UTF-8).
CHILD_ENCODING = {"PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}


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
    """Every descendant of ``pid`` (children first, then theirs). On Windows only with psutil
    (``taskkill /T`` finds the tree itself; :func:`remove_tree` waits for the files)."""
    try:
        import psutil

        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:  # gone, or not ours to see
            return []
    except ImportError:
        pass
    if sys.platform == "win32":
        return []
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        r = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True, **hidden_window_options())
        kids = [int(v) for v in r.stdout.split()]
        found += kids
        frontier += kids
    return found


def _windows_pid_running(pid: int, kernel32, last_error) -> bool:
    """Whether process ``pid`` runs, through the Win32 API (``kernel32``: ``ctypes.WinDLL("kernel32",
    use_last_error=True)``, ``last_error``: ``ctypes.get_last_error``): OpenProcess fails for a
    process that is gone (access denied: it runs, as another user's) and GetExitCodeProcess
    says STILL_ACTIVE while it runs."""
    import ctypes

    query_limited_information, access_denied, still_active = 0x1000, 5, 259
    handle = kernel32.OpenProcess(query_limited_information, False, pid)
    if not handle:
        return last_error() == access_denied
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not reaped, does not)."""
    try:
        import psutil

        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True
    except ImportError:
        pass
    if sys.platform == "win32":  # pragma: no cover - tested with a fake kernel32
        import ctypes

        return _windows_pid_running(pid, ctypes.WinDLL("kernel32", use_last_error=True), ctypes.get_last_error)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def wait_for_exit(pids: list[int], timeout_s: float = 10.0, poll_s: float = 0.05) -> bool:
    """Wait until none of ``pids`` runs, at most ``timeout_s``; whether they have all ended.
    ``psutil.wait_procs`` where psutil is installed, else polling :func:`pid_running`; in short
    slices either way, because a zombie (ended, not yet reaped) still exists for psutil."""
    try:
        import psutil
    except ImportError:
        psutil = None
    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if pid_running(p)]
    while alive and time.monotonic() < deadline:
        if psutil is not None:
            procs = []
            for p in alive:
                try:
                    procs.append(psutil.Process(p))
                except psutil.Error:  # gone (or not ours to wait for: polled below)
                    pass
            psutil.wait_procs(procs, timeout=max(0.0, min(0.25, deadline - time.monotonic())))
        else:
            time.sleep(poll_s)
        alive = [p for p in alive if pid_running(p)]
    return not alive


def kill_process_tree(pid: int, timeout_s: float = 10.0) -> bool:
    """Kill ``pid`` and all its descendants, and wait (up to ``timeout_s``) until the
    descendants are gone (``pid`` itself is left for its parent to reap); whether they are.
    On Windows ``taskkill /F /T`` kills the tree, and returns before the processes have ended."""
    descendants = child_pids(pid)  # before the kill: a killed parent's children are orphans
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, **hidden_window_options())
    else:
        for p in [*descendants, pid]:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return wait_for_exit(descendants, timeout_s)


def remove_tree(path: str | os.PathLike, timeout_s: float = 10.0, poll_s: float = 0.2) -> bool:
    """Remove the folder ``path``, retrying for up to ``timeout_s`` while it cannot be (Windows
    refuses to delete a file that a process, or a virus scanner, still has open); whether it is
    gone. Each try removes what it can; the :data:`OWNER_FILE` goes last, so that a folder that
    stays still says whose it was."""
    path = Path(path)
    deadline = time.monotonic() + timeout_s
    while True:
        if not path.exists():
            return True
        error = None
        try:
            entries = list(path.iterdir())
        except OSError as err:
            entries, error = [], err
        for entry in entries:
            if entry.name == OWNER_FILE:
                continue
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError as err:
                error = err
        if error is None:
            try:
                (path / OWNER_FILE).unlink(missing_ok=True)
                path.rmdir()
                return True
            except OSError as err:
                error = err
        if time.monotonic() >= deadline:
            log.warning("could not remove %s: %s", path, error)
            return False
        time.sleep(poll_s)


def claim_work_dir(work_dir: str | os.PathLike, pids: list[int]) -> None:
    """Write which processes use ``work_dir`` (:data:`OWNER_FILE`); nothing if it does not exist."""
    try:
        (Path(work_dir) / OWNER_FILE).write_text(json.dumps({"pids": [int(p) for p in pids]}), encoding="utf-8")
    except OSError:
        pass


def stale_work_dirs(root: str | os.PathLike, running=pid_running, now: float | None = None) -> list[Path]:
    """The module's work folders in ``root`` (named :data:`WORK_DIR_PREFIX`...) that no process
    uses any more: every process its :data:`OWNER_FILE` lists has ended; without an owner file
    (an earlier version of the module), unchanged for :data:`UNOWNED_STALE_S`."""
    now = time.time() if now is None else now
    stale = []
    try:
        entries = sorted(Path(root).iterdir())
    except OSError:
        return []
    for folder in entries:
        if not folder.name.startswith(WORK_DIR_PREFIX) or not folder.is_dir() or folder.is_symlink():
            continue
        try:
            owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
            pids = [int(p) for p in owner["pids"]]
        except FileNotFoundError:
            try:
                if now - folder.stat().st_mtime > UNOWNED_STALE_S:
                    stale.append(folder)
            except OSError:
                pass
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours to judge
        if not any(running(p) for p in pids):
            stale.append(folder)
    return stale


def sweep_stale_work_dirs(root: str | os.PathLike, running=pid_running) -> list[Path]:
    """Remove the stale work folders of :func:`stale_work_dirs` (each tried once, not waited
    for); the ones removed."""
    return [folder for folder in stale_work_dirs(root, running) if remove_tree(folder, timeout_s=0.0)]


@dataclass
class Poll:
    """What one poll found: progress events ``(fraction, message)`` and new stderr lines."""

    progress: list[tuple[float, str]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


class BackgroundJob:
    """Runs ``args`` (a full command line) in a child process.

    ``poll()`` returns what arrived since the last call and never blocks; ``finished`` and
    ``returncode`` tell how it ended; ``error()`` is the message for the user. ``env`` (default:
    this process's) gets :data:`CHILD_ENCODING`. ``work_dir`` (if given) is claimed for this
    process and the child (:func:`claim_work_dir`) and removed by ``cleanup()`` (once the
    results are read) or ``cancel()`` (after the processes are gone), and at once if the
    process cannot be started (the error, e.g. ``FileNotFoundError`` for a missing program,
    is raised).
    """

    def __init__(self, args: list[str], env: dict | None = None, cwd: str | None = None,
                 work_dir: str | os.PathLike | None = None):
        self.args = [str(a) for a in args]
        self.work_dir = Path(work_dir) if work_dir else None
        self.stderr_lines: list[str] = []
        self.cancelled = False
        self._lines: queue.Queue = queue.Queue()
        log.info("starting: %s", " ".join(self.args))
        env = {**(os.environ if env is None else env), **CHILD_ENCODING}
        try:
            self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                            cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
                                            **hidden_window_options())
        except Exception:
            self.cleanup()  # nothing runs that could still use it
            raise
        if self.work_dir is not None:
            claim_work_dir(self.work_dir, [os.getpid(), self.process.pid])
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
        """Kill the whole process tree, wait until it has ended, then remove the work folder."""
        if self.process.poll() is None:
            self.cancelled = True
            log.info("cancelling process %d and its children", self.process.pid)
            if not kill_process_tree(self.process.pid):
                log.warning("processes of %d were still running after the cancel", self.process.pid)
            try:
                self.process.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                log.warning("process %d did not end after the cancel", self.process.pid)
        for t in self._readers:
            t.join(timeout=2.0)
        self.cleanup()

    def cleanup(self) -> bool:
        """Remove the work folder (retrying while its files are still open); whether it is gone.
        One that stays is removed by :func:`sweep_stale_work_dirs` once its processes have ended."""
        if self.work_dir is None:
            return True
        return remove_tree(self.work_dir)


def default_device(current: str, cuda: bool, defaulted: bool) -> tuple[str, str | None]:
    """The device a run gets, and the log line that says why it changed (None if it did not).

    ``current``: the chosen device; ``cuda``: whether torch sees a GPU; ``defaulted``: whether
    this choice has had its default already. Where torch sees a GPU, cuda is the default once
    (a later choice of cpu stays); where it sees none, cuda becomes cpu."""
    if cuda and not defaulted and current != "cuda":
        return "cuda", "Device: cuda (torch sees a GPU); choose cpu under Advanced to run on the processor."
    if not cuda and current == "cuda":
        return "cpu", "Device: cpu (cuda was chosen, but torch sees no GPU here)."
    return current, None


def run_device(current: str, cuda: bool | None, defaulted: bool) -> str:
    """The ``--device`` of a background run. ``cuda`` None: not known, because torch is not
    imported in Slicer's process (a run does not import it there: it takes seconds, with the
    GUI waiting). A choice that is still the untouched default then becomes ``auto``: the run,
    which imports torch anyway, takes cuda where torch sees a GPU, as :func:`default_device`
    would have; a choice the user made is passed as it is."""
    if cuda is None and not defaulted and current == "cpu":
        return "auto"
    return current


#: The attribute this module sets on the 4DCT outputs it makes (the value: the output's role).
OUTPUT_ATTRIBUTE = "ProgressiveRegistration.output"


def phases_problem(sequence) -> str | None:
    """Why a Sequence cannot be registered as the phases of a 4DCT (one line), or None: its data
    nodes must be scalar volumes (not label maps, transforms or tables), and it must not be one
    of this module's own outputs (ventilation maps are scalar volumes too). Reads the node only,
    so the panel can ask it for every selection without loading the registration stack."""
    name = sequence.GetName()
    role = sequence.GetAttribute(OUTPUT_ATTRIBUTE)
    if role:
        return f"'{name}' is an output of this module ({role}), not a 4DCT"
    if sequence.GetNumberOfDataNodes() == 0:
        return f"'{name}' holds no phases"
    node = sequence.GetNthDataNode(0)
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        return f"'{name}' holds {node.GetClassName()} nodes, not CT volumes"
    return None


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
