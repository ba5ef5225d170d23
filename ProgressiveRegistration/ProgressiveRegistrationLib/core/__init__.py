"""The foundations: what every other package builds on, and which imports no other package.

Voxel grids and their LPS geometry (``grid``), displacement fields in torch (``fields``),
the network field as an LPS transform and ITK transform files (``transforms``), warping
(``warp``), TRE and the other metrics (``metrics``), lung and body masks (``lungs``), input
checks (``checks``), ``InputError`` (``errors``), atomic writes (``atomic``), the optional
numba compiler (``jit``) and the device choice (``device``). Imports: only its own modules.
"""
