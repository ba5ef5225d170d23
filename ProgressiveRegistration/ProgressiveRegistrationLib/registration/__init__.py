"""Registering images: the engine (``register_images``: network, then refinement), the
test-time refinement, ventilation maps, 4DCT phases, scoring on landmark pairs
(``evaluation``), a registration's output files and figures, and the file-to-file pipelines
that ``progreg register`` and ``register-4d`` run.

Imports: ``core``, ``io``, ``simulation`` and ``model``.
"""
