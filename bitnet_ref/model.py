"""The BitNet b1.58 forward pass: Weights (views into the memory-mapped GGUF), KVCache, RunState, Model.forward.

`Model.forward` reads top to bottom like docs/NUMERICS.md §2 and llama.cpp's `bitnet` graph (docs/NUMERICS.md §6); each
linear goes through bitnet_ref.linear's table, keyed by (weight type, activation kind of the numerics profile, device),
to a kernel that reads the packed weights in place. `trace(name, layer, array)` fires where llama.cpp's eval callback
sees a tensor of that name, with the same meaning; where llama.cpp has several nodes of one name, the last one is
traced (Qcur, Kcur: after RoPE; Vcur: the matmul output, or its `.scale` product).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from bitnet_ref import formats
from bitnet_ref.checkpoint import Checkpoint, read_model_file
from bitnet_ref.config import ModelConfig
from bitnet_ref.constants import (
    TENSOR_ATTN_K,
    TENSOR_ATTN_NORM,
    TENSOR_ATTN_OUTPUT,
    TENSOR_ATTN_Q,
    TENSOR_ATTN_SUB_NORM,
    TENSOR_ATTN_V,
    TENSOR_FFN_DOWN,
    TENSOR_FFN_GATE,
    TENSOR_FFN_NORM,
    TENSOR_FFN_SUB_NORM,
    TENSOR_FFN_UP,
    TENSOR_OUTPUT,
    TENSOR_OUTPUT_NORM,
    TENSOR_TOKEN_EMBD,
    GGMLType,
)
from bitnet_ref.device import CPU_DEVICE, Device, resolve_device
from bitnet_ref.errors import (
    ConfigError,
    ContextOverflowError,
    EngineError,
    FormatError,
    ScaleError,
    TokenRangeError,
    UnsupportedFormatError,
)
from bitnet_ref.gguf_reader import GGUFFile
from bitnet_ref.kernels import activation, attention, norm, rope, ternary
from bitnet_ref.kernels.scalar import powf
from bitnet_ref.layout import Layout, read_layout
from bitnet_ref.linear import CPU, Input, Linear, Scratch, apply, check_weight, kernel_for
from bitnet_ref.numerics import Numerics, resolve

Trace = Callable[[str, int, np.ndarray], None]

N_UBATCH = 512  # tokens per forward chunk; llama.cpp's default n_ubatch (the chunk size picks kernel paths)
EMBED_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.TQ1_0, GGMLType.TQ2_0)


# ----------------------------------------------------------------------------------------------------------------------
# Weights


@dataclass(frozen=True)
class Layer:
    """One transformer block's weights; norm vectors are small f32 copies, linears stay in the file."""

    attn_norm: np.ndarray  # (n_embd,)
    attn_q: Linear  # (n_embd → n_embd)
    attn_k: Linear  # (n_embd → n_embd_kv)
    attn_v: Linear  # (n_embd → n_embd_kv)
    attn_sub_norm: np.ndarray  # (n_embd,)   BitNet: RMSNorm before o_proj
    attn_output: Linear  # (n_embd → n_embd)
    ffn_norm: np.ndarray  # (n_embd,)
    ffn_gate: Linear  # (n_embd → n_ff)
    ffn_up: Linear  # (n_embd → n_ff)
    ffn_sub_norm: np.ndarray  # (n_ff,)     BitNet: RMSNorm before down_proj
    ffn_down: Linear  # (n_ff → n_embd)


@dataclass(frozen=True)
class Weights:
    """All weights of a model: views into one memory-mapped GGUF."""

    token_embd: Linear  # (n_vocab rows of n_embd): embedding lookup, and the head when tied
    output_norm: np.ndarray  # (n_embd,)
    output: Linear  # the head: token_embd (tied) or output.weight
    layers: tuple[Layer, ...]


def _typed_view(raw: np.ndarray, type_id: GGMLType) -> np.ndarray:
    """The kernel's view of a tensor's bytes: uint16 for F16/BF16, f32 for F32, raw uint8 otherwise."""
    raw = np.asarray(raw)
    if type_id in (GGMLType.F16, GGMLType.BF16):
        return raw.view(np.uint16)
    if type_id == GGMLType.F32:
        return raw.view(np.float32)
    return raw


def _linear(gguf: GGUFFile, name: str, numerics: Numerics, layout: Layout, bitlinear: bool = True) -> Linear:
    """A Linear for tensor `name` (a BitLinear projection, or the head with bitlinear=False), its bytes read in the
    layout's I2_S layout and TL tiling; UnsupportedFormatError when no kernel runs its type under this profile."""
    info = gguf.tensors[name]
    fmt = layout.i2s_format if info.type == GGMLType.I2_S else formats.get(info.type)
    kind = numerics.activation_for(info.type, bitlinear)
    kernel = kernel_for(fmt, kind, CPU)
    if kernel is None:
        raise UnsupportedFormatError(
            f"{gguf.path}: tensor {name} has type {info.type.name} ({int(info.type)}), which has no kernel under "
            f"numerics {numerics.name!r} (activation {kind!r})"
        )
    scale_name = name.removesuffix(".weight") + ".scale"
    scale = None
    if scale_name in gguf.tensors:
        scale = float(formats.get(gguf.tensors[scale_name].type).decode(gguf.tensor_bytes(scale_name), (1,))[0])
    raw = np.asarray(gguf.tensor_bytes(name))
    params: tuple = ()
    try:
        if fmt.SCALE_TENSOR:
            params = (*layout.tiling(fmt, info.rows, info.cols), float(gguf.tl_scale(name)[0]))
        check_weight(fmt, raw, info.rows, info.cols, kind, params)
        if fmt in (formats.TQ1_0, formats.TQ2_0) and kind == "i8_token":
            params = (ternary.one_run_rows(fmt.NAME, raw, info.rows, info.cols),)
    except (FormatError, ConfigError, ScaleError) as e:
        raise UnsupportedFormatError(f"{gguf.path}: tensor {name} under numerics {numerics.name!r}: {e}") from None
    return Linear(name, fmt, info.rows, info.cols, _typed_view(raw, info.type), kind, kernel, scale, params)



def _vector(gguf: GGUFFile, name: str) -> np.ndarray:
    """A norm weight as a contiguous f32 array (tiny; converted once at load)."""
    info = gguf.tensors[name]
    return np.ascontiguousarray(formats.get(info.type).decode(gguf.tensor_bytes(name), info.shape).reshape(-1))


def load_weights(gguf: GGUFFile, config: ModelConfig, numerics: Numerics, layout: Layout) -> Weights:
    """Weights of every layer as views into the file, checked against the dispatch table."""
    embd_type = gguf.tensors[TENSOR_TOKEN_EMBD].type
    if embd_type not in EMBED_TYPES:
        raise UnsupportedFormatError(
            f"{gguf.path}: tensor {TENSOR_TOKEN_EMBD} has type {embd_type.name}, "
            f"which has no row lookup; supported: {[t.name for t in EMBED_TYPES]}"
        )
    layers = []
    for i in range(config.n_layer):
        layers.append(
            Layer(
                attn_norm=_vector(gguf, TENSOR_ATTN_NORM.format(i=i)),
                attn_q=_linear(gguf, TENSOR_ATTN_Q.format(i=i), numerics, layout),
                attn_k=_linear(gguf, TENSOR_ATTN_K.format(i=i), numerics, layout),
                attn_v=_linear(gguf, TENSOR_ATTN_V.format(i=i), numerics, layout),
                attn_sub_norm=_vector(gguf, TENSOR_ATTN_SUB_NORM.format(i=i)),
                attn_output=_linear(gguf, TENSOR_ATTN_OUTPUT.format(i=i), numerics, layout),
                ffn_norm=_vector(gguf, TENSOR_FFN_NORM.format(i=i)),
                ffn_gate=_linear(gguf, TENSOR_FFN_GATE.format(i=i), numerics, layout),
                ffn_up=_linear(gguf, TENSOR_FFN_UP.format(i=i), numerics, layout),
                ffn_sub_norm=_vector(gguf, TENSOR_FFN_SUB_NORM.format(i=i)),
                ffn_down=_linear(gguf, TENSOR_FFN_DOWN.format(i=i), numerics, layout),
            )
        )
    token_embd = _linear(gguf, TENSOR_TOKEN_EMBD, numerics, layout, bitlinear=False)  # BitNet: the head is unquantized
    output = token_embd if config.tied_output else _linear(gguf, TENSOR_OUTPUT, numerics, layout, bitlinear=False)
    return Weights(token_embd, _vector(gguf, TENSOR_OUTPUT_NORM), output, tuple(layers))


# ----------------------------------------------------------------------------------------------------------------------
# KV cache and run state


class KVCache:
    """Per-layer K and V, f16 bits or f32, in attention.kv_layout's shapes: ggml's K (n_ctx, n_embd_kv) and transposed
    V (n_embd_kv, n_ctx), or the blocked order's K in (dim, key) tiles of 16 positions and V by position; cells
    0..n_past-1 valid."""

    def __init__(self, n_layer: int, n_ctx: int, n_embd_kv: int, dtype: str, blocked: bool = False) -> None:
        store = np.uint16 if dtype == "f16" else np.float32
        k_shape, v_shape = attention.kv_layout(n_ctx, n_embd_kv, blocked)
        self.n_ctx = n_ctx
        self.dtype = dtype
        self.blocked = blocked
        self.k = [np.zeros(k_shape, store) for _ in range(n_layer)]
        self.v = [np.zeros(v_shape, store) for _ in range(n_layer)]
        self.n_past = 0

    def reset(self) -> None:
        """Forget every cell (cells are rewritten before they are read again)."""
        self.n_past = 0

    def truncate(self, n: int) -> None:
        """Keep only the first n positions."""
        if not 0 <= n <= self.n_past:
            raise EngineError(f"KV truncate to {n}: expected 0 <= n <= n_past = {self.n_past}")
        self.n_past = n


class RunState:
    """Activation buffers for up to n_ubatch tokens, allocated once; forward uses row slices [:T]."""

    def __init__(self, config: ModelConfig, n_ubatch: int) -> None:
        e, kv, ff, B = config.n_embd, config.n_embd_kv, config.n_ff, n_ubatch
        self.h = np.zeros((B, e), np.float32)  # (B, n_embd) residual stream
        self.x = np.zeros((B, e), np.float32)  # (B, n_embd) normed input of a block half
        self.q = np.zeros((B, e), np.float32)  # (B, n_head·hd)
        self.k = np.zeros((B, kv), np.float32)  # (B, n_head_kv·hd)
        self.v = np.zeros((B, kv), np.float32)  # (B, n_head_kv·hd)
        self.att = np.zeros((B, e), np.float32)  # (B, n_embd) attention output (kqv_out)
        self.proj = np.zeros((B, e), np.float32)  # (B, n_embd) o_proj / down_proj output
        self.gate = np.zeros((B, ff), np.float32)  # (B, n_ff)
        self.up = np.zeros((B, ff), np.float32)  # (B, n_ff)
        self.ffn = np.zeros((B, ff), np.float32)  # (B, n_ff) act(gate)·up, then its sub-norm
        self.logits = np.zeros((B, config.n_vocab), np.float32)  # (B, n_vocab)
        self.n_ubatch = B
        self.scratch = Scratch(B)  # prepared linear inputs (quantized / rounded x), by activation kind


# ----------------------------------------------------------------------------------------------------------------------
# Model


@dataclass
class Model:
    """A loaded model: config, numerics, weights, KV cache and buffers; forward() runs the network."""

    config: ModelConfig
    numerics: Numerics
    n_threads: int
    weights: Weights
    kv: KVCache
    state: RunState
    path: Path
    gguf: GGUFFile = field(repr=False)
    layout: Layout = field(default_factory=Layout)  # how byte orders the file does not record were read
    device: Device = CPU_DEVICE  # where forward runs (bitnet_ref.device); the CPU for this class

    def __post_init__(self) -> None:
        c = self.config
        self.attn_scale = np.float32(1.0) / np.float32(math.sqrt(np.float32(c.head_dim)))  # 1.0f/sqrtf(head_dim)
        self.theta_scale = powf(c.rope_base, np.float32(-2.0) / np.float32(c.n_rot))  # ggml: powf(base, -2/n_rot)
        self.inv_freq = rope.inv_freq(c.rope_base, c.n_rot)  # "direct": base^(-2i/n_rot)
        self.attn_settings = (self._attention_settings(False), self._attention_settings(True))  # by batched

    def _attention_settings(self, batched: bool) -> attention.AttentionSettings:
        """The attention call's settings for one query (vec_dot orders) or several (tinyBLAS where ggml takes it)."""
        c, nm = self.config, self.numerics
        tiled = nm.float_dot == "ggml" and batched
        return attention.AttentionSettings(
            c.n_head, c.n_head_kv, c.head_dim, self.attn_scale, tiled and c.head_dim % nm.lanes == 0,
            tiled and c.head_dim % 4 == 0, nm.lanes, nm.round_q_f16, nm.round_softmax_f16,
            activation.EXP_KINDS[nm.expf], nm.softmax_sum == "double_chunks", nm.attention == "blocked")

    # -- public API ----------------------------------------------------------------------------------------------------

    def forward(
        self, tokens: np.ndarray, start_pos: int, all_logits: bool = True, trace: Trace | None = None
    ) -> np.ndarray:
        """Logits (T, n_vocab) for every token, or (1, n_vocab) for the last; appends the tokens to the KV cache."""
        tokens = self._checked(tokens, start_pos)
        numba.set_num_threads(self.n_threads)
        self.kv.truncate(start_pos)
        rows = []
        T = len(tokens)
        for lo in range(0, T, self.state.n_ubatch):
            chunk = tokens[lo : lo + self.state.n_ubatch]
            last_chunk = lo + len(chunk) == T
            want = "all" if all_logits else ("last" if last_chunk else "none")
            logits = self._ubatch(chunk, start_pos + lo, want, trace)
            self.kv.n_past = start_pos + lo + len(chunk)
            if logits is not None:
                rows.append(logits.copy())
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)

    def describe(self) -> dict:
        """Config, numerics, threads, the weight type of every linear and the ternary kernels' ISA, for records."""
        w = self.weights
        types: dict[str, int] = {}
        for lin in [w.output] + [getattr(layer, n) for layer in w.layers for n in _LINEAR_FIELDS]:
            types[lin.type.name] = types.get(lin.type.name, 0) + 1
        return {
            "path": str(self.path),
            "config": self.config.describe(),
            "numerics": self.numerics.describe(),
            "numerics_str": str(self.numerics),
            "ffn_act": self.config.ffn_act,
            "ffn_act_source": self.config.ffn_act_source,
            "n_threads": self.n_threads,
            "n_ctx": self.kv.n_ctx,
            "n_ubatch": self.state.n_ubatch,
            "token_embd_type": w.token_embd.type.name,
            "linear_types": types,
            "kernel_isa": ternary.kernel_isa(),
            "layout": self.layout.describe(),  # the ternary kernels run with their default isa (fixed at import)
            "device": self.device.describe(),
            **({"checkpoint": self.gguf.describe()} if isinstance(self.gguf, Checkpoint) else {}),
        }

    # -- the network ---------------------------------------------------------------------------------------------------

    def _ubatch(self, tokens: np.ndarray, pos0: int, want: str, trace: Trace | None) -> np.ndarray | None:
        """One llama.cpp ubatch: the whole graph for T ≤ n_ubatch tokens at positions pos0.."""
        T = len(tokens)
        positions = np.arange(pos0, pos0 + T, dtype=np.int32)  # (T,)
        h = self.state.h[:T]  # (T, n_embd) residual stream
        self._embed(tokens, h)
        for il, layer in enumerate(self.weights.layers):
            attn_out = self._attention_half(layer, il, h, positions, pos0, trace)  # (T, n_embd)
            if il == self.config.n_layer - 1 and want != "all":
                # llama.cpp keeps only the output rows from here on (GET_ROWS(out_ids)); F16/F32 paths follow T
                if want == "none":
                    return None
                h, attn_out = h[T - 1 :], attn_out[T - 1 :]
            self._ffn_half(layer, il, h, attn_out, trace)
        return self._head(h, trace)

    def _attention_half(
        self, layer: Layer, il: int, h: np.ndarray, positions: np.ndarray, pos0: int, trace: Trace | None
    ) -> np.ndarray:
        """RMSNorm → Q, K, V → RoPE(Q, K) → KV cache → causal softmax(QKᵀ/√d)·V → sub-norm → o_proj."""
        c, s = self.config, self.state
        T = h.shape[0]
        double = self.numerics.rmsnorm_sum == "double"
        x, q, k, v, att, out = s.x[:T], s.q[:T], s.k[:T], s.v[:T], s.att[:T], s.proj[:T]
        norm.rmsnorm(h, layer.attn_norm, c.rms_eps, double, x)  # x: (T, n_embd)
        _fire(trace, "attn_norm", il, x)
        inp = Input(x, s.scratch)  # BitNet: Q, K and V quantize the same attn_norm output
        self._matmul(layer.attn_q, inp, q)  # q: (T, n_head·hd)
        self._matmul(layer.attn_k, inp, k)  # k: (T, n_head_kv·hd)
        self._matmul(layer.attn_v, inp, v)  # v: (T, n_head_kv·hd)
        self._rope(q, positions, c.n_head)
        self._rope(k, positions, c.n_head_kv)
        _fire(trace, "Qcur", il, q)
        _fire(trace, "Kcur", il, k)
        _fire(trace, "Vcur", il, v)
        attention.store_kv(k, v, pos0, self.kv.k[il], self.kv.v[il], self.kv.blocked)
        self._attend(q, il, pos0, att)  # att: (T, n_embd)
        _fire(trace, "kqv_out", il, att)
        # BitNet: RMSNorm of the attention output before o_proj (attn_sub_norm)
        norm.rmsnorm(att, layer.attn_sub_norm, c.rms_eps, double, x)
        _fire(trace, "attn_sub_norm", il, x)
        self._matmul(layer.attn_output, Input(x, s.scratch), out)  # out: (T, n_embd)
        _fire(trace, "attn_out", il, out)
        return out

    def _ffn_half(self, layer: Layer, il: int, h: np.ndarray, attn_out: np.ndarray, trace: Trace | None) -> None:
        """h += attn_out; RMSNorm → gate, up → act(gate)·up → sub-norm → down_proj; h += down (in place)."""
        c, s, nm = self.config, self.state, self.numerics
        T = h.shape[0]
        double = nm.rmsnorm_sum == "double"
        activation.add(attn_out, h, h)  # h: (T, n_embd) ffn_inp = attn_out + residual
        _fire(trace, "ffn_inp", il, h)
        x, gate, up, f, down = s.x[:T], s.gate[:T], s.up[:T], s.ffn[:T], s.proj[:T]
        norm.rmsnorm(h, layer.ffn_norm, c.rms_eps, double, x)  # x: (T, n_embd)
        _fire(trace, "ffn_norm", il, x)
        inp = Input(x, s.scratch)  # BitNet: gate and up quantize the same ffn_norm output
        self._matmul(layer.ffn_gate, inp, gate, "ffn_gate", il, trace)  # gate: (T, n_ff)
        self._matmul(layer.ffn_up, inp, up, "ffn_up", il, trace)  # up: (T, n_ff)
        # BitNet: relu² for 2B-4T (llama.cpp's bitnet graph computes SiLU; docs/NUMERICS.md §11)
        if c.ffn_act == "relu2":
            activation.relu2_glu(gate, up, f)  # f: (T, n_ff)
        else:
            activation.swiglu(gate, up, nm.lanes, activation.EXP_KINDS[nm.expf], f)
        _fire(trace, "ffn_sub_out", il, f)
        # BitNet: RMSNorm before down_proj (ffn_sub_norm), n_ff wide
        norm.rmsnorm(f, layer.ffn_sub_norm, c.rms_eps, double, f)
        _fire(trace, "ffn_sub_norm", il, f)
        self._matmul(layer.ffn_down, Input(f, s.scratch), down)  # down: (T, n_embd)
        _fire(trace, "ffn_down", il, down)
        activation.add(down, h, h)  # h: (T, n_embd) l_out = ffn_down + ffn_inp
        _fire(trace, "l_out", il, h)

    def _head(self, h: np.ndarray, trace: Trace | None) -> np.ndarray:
        """Final RMSNorm, then logits against token_embd (tied) or output.weight: (T, n_vocab)."""
        T = h.shape[0]
        x = self.state.x[:T]  # (T, n_embd)
        norm.rmsnorm(h, self.weights.output_norm, self.config.rms_eps, self.numerics.rmsnorm_sum == "double", x)
        _fire(trace, "result_norm", -1, x)
        logits = self.state.logits[:T]  # (T, n_vocab)
        self._matmul(self.weights.output, Input(x, self.state.scratch), logits)
        _fire(trace, "result_output", -1, logits)
        return logits

    def _embed(self, tokens: np.ndarray, h: np.ndarray) -> None:
        """h[t] = token_embd row tokens[t], dequantized exactly (GET_ROWS)."""
        lin = self.weights.token_embd
        fmt = formats.get(lin.type)
        raw = np.asarray(self.gguf.tensor_bytes(TENSOR_TOKEN_EMBD))
        shape = (lin.cols, lin.rows)
        for t, tok in enumerate(tokens):
            h[t] = fmt.decode(fmt.rows(raw, shape, int(tok), int(tok) + 1), (lin.cols, 1))[0]

    def _matmul(
        self,
        lin: Linear,
        inp: Input,
        out: np.ndarray,
        name: str | None = None,
        il: int = -1,
        trace: Trace | None = None,
    ) -> None:
        """out = x·Wᵀ through the dispatch table, then the optional `.scale` (traced before and after if named)."""
        apply(lin, inp, self.numerics, out)
        if name is not None:
            _fire(trace, name, il, out)
        if lin.scale is not None:
            activation.scale(out, np.float32(lin.scale))
            if name is not None:
                _fire(trace, name + "_s", il, out)

    def _rope(self, x: np.ndarray, positions: np.ndarray, n_heads: int) -> None:
        """RoPE (NEOX) in place on (T, n_heads·hd)."""
        c = self.config
        if self.numerics.rope_theta == "iterative_f32":
            rope.neox(x, positions, n_heads, c.head_dim, c.n_rot, self.theta_scale, x)
        else:
            rope.neox_direct(x, positions, n_heads, c.head_dim, c.n_rot, self.inv_freq, x)

    def _attend(self, q: np.ndarray, il: int, pos0: int, out: np.ndarray) -> None:
        """Causal GQA attention of q (T, n_embd) over cache cells 0..pos0+T-1 of layer il."""
        attention.attend(q, self.kv.k[il], self.kv.v[il], pos0, self.attn_settings[q.shape[0] >= 2], out)

    def _checked(self, tokens: np.ndarray, start_pos: int) -> np.ndarray:
        """tokens as int32 (T,), with ids, start position and context length checked."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or len(tokens) == 0 or not np.issubdtype(tokens.dtype, np.integer):
            raise TokenRangeError(
                f"tokens must be a non-empty 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}"
            )
        bad = np.flatnonzero((tokens < 0) | (tokens >= self.config.n_vocab))
        if len(bad):
            raise TokenRangeError(
                f"token id {int(tokens[bad[0]])} at index {int(bad[0])} is outside [0, {self.config.n_vocab})"
            )
        if not 0 <= start_pos <= self.kv.n_past:
            raise EngineError(f"start_pos {start_pos}: expected 0 <= start_pos <= n_past = {self.kv.n_past}")
        if start_pos + len(tokens) > self.kv.n_ctx:
            raise ContextOverflowError(
                f"start_pos {start_pos} + {len(tokens)} tokens exceeds the context n_ctx = {self.kv.n_ctx}"
            )
        return tokens.astype(np.int32)


_LINEAR_FIELDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _fire(trace: Trace | None, name: str, layer: int, array: np.ndarray) -> None:
    """Call trace with a copy (buffers are reused); nothing when trace is None."""
    if trace is not None:
        trace(name, layer, array.copy())


def load_model(
    path: str | Path,
    numerics: str | Numerics = "ggml",
    n_threads: int = 2,
    ffn_act: str | None = None,
    n_ctx: int | None = None,
    n_ubatch: int = N_UBATCH,
    i2s_layout: str = "x86",
    kernel_config: str | Path | None = None,
    device: str = "cpu",
) -> Model:
    """Open a GGUF or an HF checkpoint folder (checkpoint.py) and build a Model; ffn_act overrides the file's (and the
    profile's) FFN activation. What a GGUF does not record is the caller's to say (layout.py): `i2s_layout` "x86" or
    "arm", and for TL1/TL2 tensors the bitnet.cpp `kernel_config` file of their tilings (default: the
    `<stem>.kernel_config.ini` beside the file). `device` "cpu", "cuda" or "auto" (bitnet_ref.device): on a CUDA
    device the result is a bitnet_ref.cuda CudaModel (the `bitnet` profile only; DeviceError otherwise)."""
    nm = resolve(numerics)
    dev = resolve_device(device)
    if dev.name == "cuda":
        from bitnet_ref.cuda import check_numerics

        check_numerics(nm)
    gguf = read_model_file(path)
    if isinstance(gguf, Checkpoint) and (i2s_layout != "x86" or kernel_config is not None):
        raise EngineError(f"{path}: an HF checkpoint has no I2_S layout or TL tiling to choose "
                          f"(got i2s_layout={i2s_layout!r}, kernel_config={kernel_config!r})")
    config = ModelConfig.from_gguf(gguf, ffn_act=ffn_act)
    config.check_tensors(gguf)
    layout = read_layout(gguf, i2s_layout, kernel_config)
    weights = load_weights(gguf, config, nm, layout)
    ctx = config.n_ctx if n_ctx is None else n_ctx
    if ctx <= 0 or n_threads <= 0 or n_ubatch <= 0:
        raise EngineError(f"n_ctx {ctx}, n_threads {n_threads}, n_ubatch {n_ubatch}: all must be positive")
    if n_threads > numba.config.NUMBA_NUM_THREADS:
        raise EngineError(
            f"n_threads {n_threads} exceeds numba's thread pool ({numba.config.NUMBA_NUM_THREADS}; "
            "set NUMBA_NUM_THREADS before the first import of numba to raise it)"
        )
    if dev.name == "cuda":
        from bitnet_ref.cuda.forward import CudaModel  # numba.cuda is imported only when the GPU is asked for

        return CudaModel.create(config, nm, n_threads, weights, ctx, n_ubatch, Path(path), gguf, layout, dev)
    kv = KVCache(config.n_layer, ctx, config.n_embd_kv, nm.kv_dtype, nm.attention == "blocked")
    return Model(config, nm, n_threads, weights, kv, RunState(config, n_ubatch), Path(path), gguf, layout, dev)



