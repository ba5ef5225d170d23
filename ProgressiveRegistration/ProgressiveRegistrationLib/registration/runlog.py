"""``progreg.log``: what a run did, as text in its output folder.

The command, the software and its settings, every progress message and every log record of
the library (informational ones too, whatever ``--verbose`` says on the terminal) with the
seconds since the run started, the seconds per stage and the warnings. Written with the run's
other outputs (so a run refused as bad input writes none)."""

from __future__ import annotations

import contextvars
import logging
import platform
import sys
import time
from datetime import datetime, timezone

from .. import __version__

LOG_NAME = "progreg.log"
#: The command line of the ``progreg`` run in progress, where ``sys.argv`` does not tell it: set
#: by :func:`cli.main` when it is called with its arguments from Python (the caller's program).
COMMAND: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("progreg_command", default=None)
#: The packages whose versions the log names (those the run loaded).
VERSIONED = ("torch", "numpy", "SimpleITK", "numba", "matplotlib", "distributed")


class RunLog(logging.Handler):
    """Collects a run's progress messages and the library's log records (INFO and up) while it
    is entered: ``with RunLog() as log: ... progress = log.progress(progress) ...``."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.started = datetime.now(timezone.utc)
        self._t0 = time.perf_counter()
        self._logger = logging.getLogger("ProgressiveRegistrationLib")
        self._level = self._logger.level

    def __enter__(self) -> RunLog:
        self._logger.addHandler(self)
        if self._logger.getEffectiveLevel() > logging.INFO:
            # Records below the terminal's level still come here; the terminal's handler keeps its own level.
            self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def _add(self, level: str, message: str) -> None:
        self.lines.append(f"[{time.perf_counter() - self._t0:8.2f} s] {level:<7} {message}")

    def emit(self, record: logging.LogRecord) -> None:
        self._add(record.levelname, record.getMessage())

    def progress(self, report):
        """``report`` (a ``progress(fraction, message)`` callback, or None), also writing each
        message into the log."""
        def both(fraction, message):
            self._add("PROGRESS", f"{100 * fraction:3.0f}% {message}")
            if report is not None:
                report(fraction, message)

        return both

    def text(self, summary: dict) -> str:
        """The log's text; ``summary``: the run's summary (command line, device, model, grid,
        refinement, seconds per stage, warnings)."""
        loaded = [f"{name} {getattr(sys.modules[name], '__version__', '?')}" for name in VERSIONED
                  if name in sys.modules]
        head = [f"ProgressiveRegistration {__version__}",
                f"command: {' '.join(summary.get('command_line') or ['progreg'])}",
                f"started: {self.started.isoformat(timespec='seconds')}",
                f"Python {platform.python_version()} on {platform.platform()}; {', '.join(loaded)}"]
        torch = sys.modules.get("torch")
        if torch is not None:
            head.append(f"threads: {torch.get_num_threads()} (torch)")
        head.append(f"device: {summary.get('device', '?')}")
        if summary.get("model"):
            head.append(f"model: {summary['model']}")
        grid = summary.get("grid")
        if grid:
            spacing = " x ".join(f"{s:.4g}" for s in grid["transform_spacing_mm"])
            network = f"network grid: {grid['network_size']}^3 voxels; " if "network_size" in grid else ""
            head.append(f"{network}transform grid: {' x '.join(map(str, grid['transform_size']))} voxels of {spacing} mm")
        refinement = summary.get("refinement")
        if not refinement:
            head.append("refinement: none (the network's field alone)")
        else:
            head.append("refinement levels (cells of each level, as run):")
            if "levels_mm" in refinement:  # (a 4DCT summary holds the settings)
                head.append("  " + ", ".join(f"{mm:g} mm x {n}" for mm, n in zip(refinement["levels_mm"],
                                                                                 refinement["iterations"])))
            for k, lv in enumerate(refinement.get("levels", []), start=1):
                cells = " x ".join(f"{c:.3g}" for c in lv["spacing_mm"])
                done = (f"{lv['iterations']} iterations, NCC² {lv['ncc2_before']:.3f} -> {lv['ncc2_after']:.3f}, "
                        f"{lv['seconds']:.2f} s" if lv.get("iterations") else lv.get("skipped", "skipped"))
                head.append(f"  {k}. {cells} mm, {' x '.join(map(str, lv['size']))} cells: {done}")
        seconds = summary.get("seconds") or {}
        stages = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items() if isinstance(v, (int, float)))
        warnings = summary.get("warnings") or []
        return "\n".join([*head, "", *self.lines, "", f"seconds per stage: {stages or 'none recorded'}",
                          f"warnings: {len(warnings)}", *(f"  {w}" for w in warnings)]) + "\n"
