"""ProgressiveRegistration core: Qt-free, Slicer-free.

Lung CT registration with a progressively trained 3D U-Net (Eppenhof et al., IEEE TMI
2019), refined on the images. The modules, bottom layer first (docs/ARCHITECTURE.md):

* foundations: ``errors``, ``jit``, ``atomic`` (atomic writes), ``resources``, ``schedule``,
  ``config``, ``grid``, ``checks``, ``fields``;
* data: ``dirlab``, ``landmarks``, ``images``, ``lungs``, ``metrics``, ``transforms``,
  ``warp``, ``phantom``, ``breathing``;
* method: ``preprocess``, ``network``, ``modelfile``, ``refine``, ``synthesis``, ``device``,
  ``engine``, ``ventilation``, ``fourd``;
* products: ``plots``, ``outputs``, ``pipeline``, ``evaluation``, ``trainset``,
  ``checkpoint``, ``trainer``, ``cli``, and for Slicer ``mrml``, ``mrml4d``, ``jobs``,
  ``requirements``.

This file imports nothing at load time: the Slicer module imports ``requirements`` from
this package before torch may be installed.
"""

__version__ = "0.1.0"


def register_volume_nodes(scene, fixed, moving, fixed_landmarks=None, moving_landmarks=None, model=None, **kwargs):
    """Register two volume nodes of ``scene``; see :func:`ProgressiveRegistrationLib.mrml.register_volume_nodes`."""
    from .mrml import register_volume_nodes as _register

    return _register(scene, fixed, moving, fixed_landmarks, moving_landmarks, model, **kwargs)
