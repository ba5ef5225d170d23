"""ProgressiveRegistration core: Qt-free, Slicer-free.

Lung CT registration with a progressively trained 3D U-Net (Eppenhof et al., IEEE TMI
2019). Modules: ``geometry`` (grids, crops), ``images`` (I/O), ``fields`` (displacement
fields in torch), ``transforms`` (physical transforms, ITK files), ``landmarks`` (point
files, TRE), ``dirlab``, ``synthesis`` (training pairs), ``schedule``, ``network``,
``training``, ``config``, ``cli``.
"""

__version__ = "0.1.0"


def register_volume_nodes(scene, fixed, moving, fixed_landmarks=None, moving_landmarks=None, model=None, **kwargs):
    """Register two volume nodes of ``scene``; see :func:`ProgressiveRegistrationLib.mrml.register_volume_nodes`."""
    from .mrml import register_volume_nodes as _register

    return _register(scene, fixed, moving, fixed_landmarks, moving_landmarks, model, **kwargs)
