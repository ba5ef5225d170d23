#!/usr/bin/env python3
"""Train the ProgressiveRegistration network.

    python ProgressiveRegistration/Scripts/train.py --smoke --out runs/smoke
    python ProgressiveRegistration/Scripts/train.py --config configs/cpu.yaml --out runs/cpu
    Slicer --no-main-window --python-script .../Scripts/train.py -- --smoke --out /tmp/smoke
    torchrun --nproc_per_node 2 ProgressiveRegistration/Scripts/train.py --config ... --out ...

Kept outside the module folder's SCRIPTS (Slicer would import it as a module candidate);
installed as a module resource.
"""

import sys
from pathlib import Path

# The library sits beside this folder, in the source tree and in an installed extension.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ProgressiveRegistrationLib.cli import main  # noqa: E402

if __name__ == "__main__":
    # Slicer passes the arguments after "--" in sys.argv[1:] and does not exit on its own.
    sys.exit(main(["train", *sys.argv[1:]]))
