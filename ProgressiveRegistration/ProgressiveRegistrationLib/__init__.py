"""ProgressiveRegistration core: Qt-free, Slicer-free.

Lung CT registration with a progressively trained 3D U-Net (Eppenhof et al., IEEE TMI
2019). Modules: ``geometry`` (grids, crops), ``images`` (I/O), ``fields`` (displacement
fields in torch), ``transforms`` (physical transforms, ITK files), ``landmarks`` (point
files, TRE), ``dirlab``, ``synthesis`` (training pairs), ``schedule``, ``network``,
``training``, ``config``, ``cli``.
"""

__version__ = "0.1.0"
