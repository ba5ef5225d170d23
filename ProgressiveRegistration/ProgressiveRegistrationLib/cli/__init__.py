"""``progreg``: the command line (also ``python -m ProgressiveRegistrationLib``).

Every subcommand exits 0 on success, 2 on bad input (one line on stderr, nothing
written), 1 on an unexpected failure. An output that cannot be written (a full disk, no
permission, a read-only file system) is bad input too: one line naming the path. The
library logs; this is where its log records become lines on stderr.

Imports: every package but ``slicer``; the subcommands' modules only when they run
(:mod:`.parsers` holds the arguments).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from .. import __version__
from ..core.errors import EXIT_BAD_INPUT, InputError, write_error
from ..registration.runlog import COMMAND
from .common import TERMINATION, Terminated, configure_logging, terminate
from .parsers import (
    add_apply,
    add_batch,
    add_demo,
    add_dirlab,
    add_phantom,
    add_register,
    add_register_4d,
    add_series,
    add_synth,
    add_train,
    add_tre,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="progreg",
        description="Progressively trained CNN registration of lung CT (Eppenhof et al., IEEE TMI 2019).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--verbose", action="store_true", help="log the library's informational messages too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (add_register, add_register_4d, add_apply, add_batch, add_demo, add_tre, add_dirlab, add_series, add_synth,
                add_phantom, add_train):
        add(sub)
    for command in sub.choices.values():  # --verbose after the subcommand too (not given there: the top level's)
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log the library's informational messages too")
    return parser


def handler_of(name: str):
    """The function ``"module:function"`` of this package that runs a subcommand, imported now:
    the parser is built without the engine (``progreg --help`` answers at once)."""
    module, function = name.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Called from Python with its arguments: the provenance is this command, not the caller's sys.argv.
    token = COMMAND.set(["progreg", *map(str, argv)]) if argv is not None else None
    handler = configure_logging(args.command, args.verbose)
    if threading.current_thread() is threading.main_thread():
        TERMINATION.clear()
        signal.signal(signal.SIGTERM, terminate)
    try:
        return int(handler_of(args.func)(args) or 0)
    except InputError as err:
        print(f"progreg {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # a write outside the library's writers (they say WriteError themselves)
        found = write_error(err, err.filename if err.filename is not None else "an output")
        if found is None:
            raise
        print(f"progreg {args.command}: error: {found}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Terminated:
        print(f"progreg {args.command}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"progreg {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        handler.close()
        logging.getLogger("ProgressiveRegistrationLib").removeHandler(handler)
        if token is not None:
            COMMAND.reset(token)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
