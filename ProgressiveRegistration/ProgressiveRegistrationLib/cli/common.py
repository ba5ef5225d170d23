"""What the subcommands share: progress printing, the device and refinement options, logging."""

from __future__ import annotations

import json
import logging
import sys
import threading

from ..core.errors import InputError
from ..registration.refine_config import DEFAULT as DEFAULT_REFINEMENT
from ..registration.refine_config import RefineConfig, config_from_options


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slicer's Cancel, a cluster scheduler, ``kill``), handled like Ctrl-C: every
    ``finally`` runs, so no staging folder or partial output stays behind."""


# Set by the SIGTERM handler; cleared when a command starts (``progreg.main`` called again in one process).
TERMINATION = threading.Event()


def terminate(signum, frame):
    """The SIGTERM handler: raises :class:`Terminated`, and raises it again at the next progress
    report where the first one was swallowed (Python drops an exception raised inside a callback
    from C, such as numba's compiler calling back into Python while it loads its kernels)."""
    TERMINATION.set()
    raise Terminated


def progress_printer(as_json: bool):
    """``progress(fraction, message)``: ``[ 42%] message`` on stderr, or JSON lines on stdout
    (what the Slicer module's background process reads). A termination requested before
    (:func:`terminate`) is raised here instead."""
    def report(fraction, message):
        if TERMINATION.is_set():
            raise Terminated
        if as_json:
            print(json.dumps({"fraction": round(fraction, 3), "message": message}), flush=True)
        else:
            print(f"[{int(100 * fraction):3d}%] {message}", file=sys.stderr, flush=True)

    return report


def add_device_option(p) -> None:
    """``--device auto|cpu|cuda[:n]`` (default auto: CUDA when torch sees one, else the CPU)."""
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help="torch device of the network and the refinement (default auto: CUDA when present, else "
                        "the CPU; cuda without a GPU runs on the CPU with a notice)")


def add_refine_options(p) -> None:
    g = p.add_argument_group("refinement", "after the network, a short optimisation of the field on the images "
                                           "(on by default; see docs/CONVENTIONS.md)")
    g.add_argument("--no-refine", action="store_true", help="the network's one-pass field only (fastest)")
    levels = ",".join(f"{v:g}" for v in DEFAULT_REFINEMENT.levels_mm)
    iterations = ",".join(map(str, DEFAULT_REFINEMENT.iterations))
    g.add_argument("--refine-levels", metavar="MM[,MM...]",
                   help=f"nominal grid spacing of each refinement level, mm, coarse to fine (default {levels}). A "
                        "level's cells are whole numbers of the image's voxels per axis, the number nearest to the "
                        "spacing, within 20 %% of it (the finest level never coarser by more, the others never finer), "
                        "at least one voxel: '2' runs on 1.37 mm cells of 1.37 mm voxels, on 2.73 x 2.73 x 5 mm cells "
                        "of 2.73 x 2.73 x 5 mm voxels. The progress lines and progreg.log give the cells as run")
    g.add_argument("--refine-iterations", metavar="N[,N...]",
                   help=f"iterations per level: one count for all, or one per level (default {iterations})")


def refinement(args) -> RefineConfig | None:
    """The RefineConfig of the refinement options, or None with --no-refine."""
    if args.no_refine:
        if args.refine_levels is not None or args.refine_iterations is not None:
            raise InputError("--no-refine cannot be combined with --refine-levels or --refine-iterations")
        return None
    return config_from_options(args.refine_levels, args.refine_iterations)


class _Formatter(logging.Formatter):
    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        return f"progreg {self.command}: {record.levelname.lower()}: {record.getMessage()}"


def configure_logging(command: str, verbose: bool = False) -> logging.Handler:
    """The library's log records (warnings and up; info too with ``verbose``) as lines on
    stderr: ``progreg register: warning: ...``. Returns the handler (to remove it again)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(command))
    # The level is the handler's: a run's progreg.log (registration/runlog.py) takes the INFO records
    # that the terminal does not show.
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    root = logging.getLogger("ProgressiveRegistrationLib")
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    return handler
