"""Typed errors of bitnet_ref. Each names where it happened (file, field or tensor), the value and what was expected."""

from __future__ import annotations


class BitnetRefError(Exception):
    """Base of every error bitnet_ref raises on purpose."""


class FileAccessError(BitnetRefError, OSError):
    """A path cannot be opened as a file: it is missing, a directory or other non-regular file, or access is denied."""

    def __init__(self, path: object, action: str, reason: str | OSError) -> None:
        self.path = str(path)
        self.action = action
        self.reason = (reason.strerror or str(reason)) if isinstance(reason, OSError) else reason
        super().__init__(f"{self.path}: cannot {action}: {self.reason}")
        self.errno = reason.errno if isinstance(reason, OSError) else None  # kept for callers that test errno


class FieldError(BitnetRefError, ValueError):
    """A field of a model file has a value it may not have: `<path>: <field> = <value>; expected <expected>`."""

    def __init__(self, path: object, field: str, value: object, expected: str) -> None:
        self.path = str(path)
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{self.path}: {field} = {value!r}; expected {expected}")


class GGUFError(FieldError):
    """A GGUF file is malformed or unsupported."""


class BadMagicError(GGUFError):
    """The file does not start with b'GGUF'."""


class UnsupportedVersionError(GGUFError):
    """The GGUF version is not 2 or 3."""


class TruncatedError(GGUFError):
    """The file ends before a field it declares."""


class CountError(GGUFError):
    """A count (strings, arrays, tensors, KV pairs, dims) is larger than the file could hold."""


class DuplicateError(GGUFError):
    """A metadata key or tensor name occurs twice."""


class AlignmentError(GGUFError):
    """`general.alignment` is not a power of two, or an offset is not aligned."""


class TensorBoundsError(GGUFError):
    """Tensor data lies outside the file or overlaps another tensor."""


class UnknownTypeError(GGUFError):
    """A value type or tensor type id is unknown, or type 39 cannot be told apart (TL2 vs MXFP4)."""


class TensorShapeError(GGUFError):
    """A tensor's shape does not fit its type (block size) or its byte size."""


class ScaleError(GGUFError):
    """A ternary tensor's scale is negative, NaN or infinite."""


class ValueKindError(GGUFError):
    """A metadata value has the wrong type for its key."""


class ConfigError(BitnetRefError, ValueError):
    """Model metadata is missing, inconsistent or names an unsupported architecture."""


class FormatError(BitnetRefError, ValueError):
    """Arrays given to a weight format's encode/decode have the wrong shape, dtype or values."""


class EngineError(BitnetRefError):
    """The engine was asked for something it cannot do."""


class TokenRangeError(EngineError, ValueError):
    """A token id is outside [0, n_vocab)."""


class ContextOverflowError(EngineError, ValueError):
    """The prompt or the generation does not fit in the context."""


class DeviceError(EngineError):
    """The requested device cannot run the forward pass: no usable CUDA GPU, a simulator or CPU fallback refused by
    BITNET_STRICT_NO_FAKE_GPU, or a numerics profile the device has no kernels for."""


class UnsupportedFormatError(EngineError, NotImplementedError):
    """A tensor type has no kernel, or its shape breaks a kernel's assumptions."""


class TokenizerError(BitnetRefError, ValueError):
    """The tokenizer metadata is missing or inconsistent, or a string cannot be tokenized."""


class CheckpointError(FieldError):
    """A Hugging Face checkpoint (config.json, safetensors, tokenizer files) is malformed or unsupported."""
