"""fusion: GPU-first PyTorch operators, solvers and models for image fusion and blending.

Subpackages are imported on demand (``fusion.ops``, ``fusion.methods``, ...); importing ``fusion`` itself
is cheap.
"""

__version__ = "0.1.0"
