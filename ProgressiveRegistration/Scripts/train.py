#!/usr/bin/env python3
"""Train the ProgressiveRegistration network.

    python ProgressiveRegistration/Scripts/train.py --smoke --out runs/smoke
    python ProgressiveRegistration/Scripts/train.py --config configs/cpu.yaml --out runs/cpu
    PythonSlicer <extension>/lib/Slicer-X.Y/qt-scripted-modules/Scripts/train.py --smoke --out /tmp/smoke
    Slicer --no-main-window --python-script <extension>/lib/Slicer-X.Y/qt-scripted-modules/Scripts/train.py -- \
        --smoke --out /tmp/smoke
    torchrun --nproc_per_node 2 ProgressiveRegistration/Scripts/train.py --config ... --out ...

Kept outside the module folder's SCRIPTS (Slicer would import it as a module candidate);
installed as a module resource. Exit codes: 0 done, 2 bad input, 1 any other failure.
"""

import sys
import traceback
from pathlib import Path

# The library sits beside this folder, in the source tree and in an installed extension.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _arguments(argv):
    """The trainer's arguments: Slicer's ``--python-script`` passes the ``--`` that separates
    them from its own (``sys.argv = [script, "--", ...]``)."""
    return argv[1:] if argv and argv[0] == "--" else argv


def _exit(code):
    """End the process with ``code``. A headless Slicer does not end when the script does
    (and not on SystemExit either): it is told to quit with the code."""
    try:
        import slicer

        if getattr(slicer, "app", None) is not None:
            slicer.util.exit(code)
            return
    except ImportError:
        pass
    sys.exit(code)


def main():
    try:
        from ProgressiveRegistrationLib.cli import main as cli

        code = cli(["train", *_arguments(sys.argv[1:])])
    except SystemExit as err:  # argparse: --help, usage errors
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except BaseException:  # noqa: BLE001 - a headless run must end, with the reason on stderr
        traceback.print_exc()
        code = 1
    _exit(code)


if __name__ == "__main__":
    main()
