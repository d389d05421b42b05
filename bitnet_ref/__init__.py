"""bitnet_ref: a readable BitNet b1.58 reference inference engine in numba."""

__version__ = "0.1.0"
