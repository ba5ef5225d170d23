"""numba, the optional just-in-time compiler behind the CPU kernels of the full-resolution
stages (transform, Jacobian, warp), and its one switch.

Without numba, or with ``PROGREG_NUMBA=0`` in the environment, each stage takes its
reference path instead (torch / ITK's resampler): the same results, slower. The switch is
read once, at import.
"""

from __future__ import annotations

import os

numba = None
prange = range
if os.environ.get("PROGREG_NUMBA", "1") != "0":
    try:
        import numba

        prange = numba.prange
    except ImportError:
        numba = None
