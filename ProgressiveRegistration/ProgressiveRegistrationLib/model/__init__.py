"""The network and what defines it: the progressive schedule (α, β, γ), the configuration
dataclasses (the paper's values as defaults), the U-Net and its progressive wrapper, the crop
and network input shared by training and inference (``preprocess``), and the model file
format (``modelfile``).

Imports: ``core`` and ``io``.
"""
