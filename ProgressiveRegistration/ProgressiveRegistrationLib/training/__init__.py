"""Training the network as in the paper: synthetic B-spline training pairs, the training
and validation sets, checkpoints and model export, the trainer (progressive and baseline
arms), and its figures (paper Fig. 5–7).

Imports: ``core``, ``io``, ``simulation``, ``model`` and ``registration``.
"""
