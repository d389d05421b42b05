"""GGUF and ggml constants as plain data: value types, tensor type ids, file types, metadata keys."""

from enum import IntEnum

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
GGUF_DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4  # ggml tensors have at most 4 dimensions


class ValueType(IntEnum):
    """GGUF metadata value types."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# numpy dtype strings (little-endian) of the fixed-size value types
VALUE_DTYPES = {
    ValueType.UINT8: "<u1",
    ValueType.INT8: "<i1",
    ValueType.UINT16: "<u2",
    ValueType.INT16: "<i2",
    ValueType.UINT32: "<u4",
    ValueType.INT32: "<i4",
    ValueType.FLOAT32: "<f4",
    ValueType.BOOL: "<u1",
    ValueType.UINT64: "<u8",
    ValueType.INT64: "<i8",
    ValueType.FLOAT64: "<f8",
}


class GGMLType(IntEnum):
    """Tensor type ids; 36-39 follow bitnet.cpp's fork (type 39 is MXFP4 in mainline ggml, see MXFP4)."""

    F32 = 0
    F16 = 1
    Q8_0 = 8
    Q8_K = 15
    IQ2_S = 22
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    I2_S = 36
    I8_S = 37
    TL1 = 38
    TL2 = 39


# Mainline ggml's meaning of id 39; never a member of GGMLType because the id collides with TL2.
MXFP4_TYPE_ID = 39
MXFP4_BLOCK_ELEMS = 32
MXFP4_BLOCK_BYTES = 17


class FileType(IntEnum):
    """`general.file_type` values of mainline llama.cpp that this project writes."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q8_0 = 7
    MOSTLY_IQ2_S = 28
    MOSTLY_BF16 = 32
    MOSTLY_TQ1_0 = 36
    MOSTLY_TQ2_0 = 37


# bitnet.cpp's fork numbers these differently (docs/FORMATS.md §2); 40 is I2_S there, Q1_0 in mainline.
FORK_FILE_TYPE_TL1 = 38
FORK_FILE_TYPE_TL2 = 39
FORK_FILE_TYPE_I2_S = 40

# Architectures
ARCH_BITNET = "bitnet"
ARCH_BITNET_25 = "bitnet-25"
ARCH_BITNET_B158 = "bitnet-b1.58"
SUPPORTED_ARCHS = (ARCH_BITNET, ARCH_BITNET_25, ARCH_BITNET_B158)
FORK_ONLY_ARCHS = (ARCH_BITNET_25, ARCH_BITNET_B158)

# General metadata keys
KEY_ARCHITECTURE = "general.architecture"
KEY_ALIGNMENT = "general.alignment"
KEY_FILE_TYPE = "general.file_type"
KEY_NAME = "general.name"

# Architecture keys: format with arch=..., e.g. KEY_CONTEXT_LENGTH.format(arch="bitnet")
KEY_CONTEXT_LENGTH = "{arch}.context_length"
KEY_EMBEDDING_LENGTH = "{arch}.embedding_length"
KEY_BLOCK_COUNT = "{arch}.block_count"
KEY_FEED_FORWARD_LENGTH = "{arch}.feed_forward_length"
KEY_HEAD_COUNT = "{arch}.attention.head_count"
KEY_HEAD_COUNT_KV = "{arch}.attention.head_count_kv"
KEY_KEY_LENGTH = "{arch}.attention.key_length"
KEY_VALUE_LENGTH = "{arch}.attention.value_length"
KEY_RMS_EPS = "{arch}.attention.layer_norm_rms_epsilon"
KEY_ROPE_DIMENSION_COUNT = "{arch}.rope.dimension_count"
KEY_ROPE_FREQ_BASE = "{arch}.rope.freq_base"
KEY_ROPE_SCALING_TYPE = "{arch}.rope.scaling.type"
KEY_ROPE_SCALING_FACTOR = "{arch}.rope.scaling.factor"
KEY_VOCAB_SIZE = "{arch}.vocab_size"
KEY_HIDDEN_ACTIVATION = "{arch}.hidden_activation"

# Tokenizer keys
KEY_TOKENIZER_MODEL = "tokenizer.ggml.model"
KEY_TOKENIZER_PRE = "tokenizer.ggml.pre"
KEY_TOKENS = "tokenizer.ggml.tokens"
KEY_TOKEN_TYPE = "tokenizer.ggml.token_type"
KEY_SCORES = "tokenizer.ggml.scores"
KEY_MERGES = "tokenizer.ggml.merges"
KEY_BOS_ID = "tokenizer.ggml.bos_token_id"
KEY_EOS_ID = "tokenizer.ggml.eos_token_id"
KEY_UNK_ID = "tokenizer.ggml.unknown_token_id"
KEY_PAD_ID = "tokenizer.ggml.padding_token_id"
KEY_ADD_BOS = "tokenizer.ggml.add_bos_token"
KEY_ADD_EOS = "tokenizer.ggml.add_eos_token"
KEY_ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"


class TokenType(IntEnum):
    """llama.cpp token attributes stored in tokenizer.ggml.token_type."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Tensor names (per layer: format with i=layer)
TENSOR_TOKEN_EMBD = "token_embd.weight"
TENSOR_OUTPUT_NORM = "output_norm.weight"
TENSOR_OUTPUT = "output.weight"
TENSOR_ATTN_NORM = "blk.{i}.attn_norm.weight"
TENSOR_ATTN_Q = "blk.{i}.attn_q.weight"
TENSOR_ATTN_K = "blk.{i}.attn_k.weight"
TENSOR_ATTN_V = "blk.{i}.attn_v.weight"
TENSOR_ATTN_SUB_NORM = "blk.{i}.attn_sub_norm.weight"
TENSOR_ATTN_OUTPUT = "blk.{i}.attn_output.weight"
TENSOR_FFN_NORM = "blk.{i}.ffn_norm.weight"
TENSOR_FFN_GATE = "blk.{i}.ffn_gate.weight"
TENSOR_FFN_UP = "blk.{i}.ffn_up.weight"
TENSOR_FFN_SUB_NORM = "blk.{i}.ffn_sub_norm.weight"
TENSOR_FFN_DOWN = "blk.{i}.ffn_down.weight"
# bitnet.cpp keeps a TL1/TL2 weight's scale in a 1-element F32 tensor `<name>_scale` (docs/FORMATS.md §3.5)
TL_SCALE_SUFFIX = "_scale"
