"""ProgressiveRegistration core: Qt-free, Slicer-free.

Lung CT registration with a progressively trained 3D U-Net (Eppenhof et al., IEEE TMI
2019), refined on the images. The subpackages, bottom layer first; each imports only from
the ones below it (docs/ARCHITECTURE.md):

* ``core``: geometry, displacement fields, transforms, warping, metrics, checks, errors;
* ``io``: image, landmark and DIR-Lab files, the bundled resources;
* ``simulation``: the procedural thorax phantom and the breathing simulator;
* ``model``: the network, its schedule, configuration, input and model files;
* ``registration``: the engine, the refinement, 4DCT, evaluation, and files out;
* ``training``: synthetic pairs, the training set, checkpoints, the trainer;
* ``slicer`` and ``cli``: Slicer's side (Qt-free MRML, background jobs, requirements) and ``progreg``.

The public entry points are attributes of this package, loaded on first use: this file
imports nothing at load time, because the Slicer module imports
``ProgressiveRegistrationLib.slicer.requirements`` before torch may be installed.
"""

import importlib

__version__ = "0.1.0"

#: name -> the module that defines it (loaded when the name is first used)
_PUBLIC = {
    "register_volume_nodes": "ProgressiveRegistrationLib.slicer.inprocess",
    "register_sequence_nodes": "ProgressiveRegistrationLib.slicer.inprocess",
    "register_images": "ProgressiveRegistrationLib.registration.engine",
    "register_files": "ProgressiveRegistrationLib.registration.pipeline",
    "register_4d_files": "ProgressiveRegistrationLib.registration.pipeline",
    "load_model": "ProgressiveRegistrationLib.model.modelfile",
    "InputError": "ProgressiveRegistrationLib.core.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
