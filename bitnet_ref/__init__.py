"""bitnet_ref: a readable BitNet b1.58 reference inference engine in numba.

`load_model(path, numerics=...)` gives a Model (`forward`, `describe`), `Tokenizer.from_gguf(model.gguf)` its
tokenizer, and `generate` / `generate_all` stream or return a generation with an explicit sampler and seed (the
README's "The engine as a library" shows it end to end).

The names below are imported on first use, so that `import bitnet_ref.errors` (as the harness's child processes
do) does not load numba and the kernels.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "bitnet_ref.device": ("Device", "resolve_device"),
    "bitnet_ref.errors": ("BitnetRefError", "ConfigError", "ContextOverflowError", "DeviceError", "EngineError",
                          "FileAccessError", "FormatError", "GGUFError", "TokenizerError", "TokenRangeError",
                          "UnsupportedFormatError"),
    "bitnet_ref.generate": ("GenerationResult", "TokenEvent", "generate", "generate_all"),
    "bitnet_ref.gguf_reader": ("GGUFFile", "read_gguf"),
    "bitnet_ref.model": ("Model", "load_model"),
    "bitnet_ref.numerics": ("PROFILES", "Numerics"),
    "bitnet_ref.sampling": ("SamplerConfig", "make_rng"),
    "bitnet_ref.tokenizer": ("Tokenizer",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> object:
    """The public names, each imported from its module on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module 'bitnet_ref' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
