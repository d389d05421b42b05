"""CudaModel: the `bitnet` profile's forward pass on a CUDA GPU, with Model's surface (forward, kv, describe).

The weights are uploaded once, still packed (TQ2_0, TQ1_0, I2_S x86 bytes; the F16 or F32 embedding / head table);
the KV cache is f32 on the device; each ubatch runs the graph of bitnet_ref.model.Model kernel by kernel on device
buffers (kernels.py) and copies the logits back once. `trace` copies a traced tensor back at each point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import cuda

from bitnet_ref import formats
from bitnet_ref.config import ModelConfig
from bitnet_ref.cuda import kernels as K
from bitnet_ref.device import Device
from bitnet_ref.errors import UnsupportedFormatError
from bitnet_ref.gguf_reader import GGUFFile
from bitnet_ref.kernels import rope
from bitnet_ref.layout import Layout
from bitnet_ref.linear import Linear
from bitnet_ref.model import _LINEAR_FIELDS, KVCache, Layer, Model, Trace, Weights
from bitnet_ref.numerics import Numerics

TERNARY_KERNELS = {formats.TQ2_0: K.matmul_tq2_0, formats.TQ1_0: K.matmul_tq1_0, formats.I2_S: K.matmul_i2s}
FLOAT_HEADS = (formats.F16, formats.F32)


@dataclass(frozen=True)
class DeviceLinear:
    """One linear's bytes on the device, still packed, and what its kernel needs besides them."""

    host: Linear  # the file view it was uploaded from (name, format, shape, `.scale`)
    data: object  # device array: packed uint8 bytes, f16 bits (uint16) or f32
    i2s_scale: np.float32  # I2_S's per-tensor scale (read once on the host); 0 for other formats


def _upload(lin: Linear, bitlinear: bool) -> DeviceLinear:
    """The linear's bytes on the device; UnsupportedFormatError where no CUDA kernel reads its format."""
    ok = lin.fmt in TERNARY_KERNELS and lin.activation == "i8_token"
    ok = ok or (not bitlinear and lin.fmt in FLOAT_HEADS and lin.activation == "none")
    if not ok:
        raise UnsupportedFormatError(
            f"tensor {lin.name}: format {lin.fmt.NAME} with activation {lin.activation!r} has no CUDA kernel "
            f"(the GPU runs TQ2_0, TQ1_0 and I2_S (x86) linears and an F16 or F32 head)"
        )
    scale = lin.fmt.scales(lin.data, (lin.cols, lin.rows))[0] if lin.fmt is formats.I2_S else np.float32(0)
    return DeviceLinear(lin, cuda.to_device(np.ascontiguousarray(lin.data)), scale)


@dataclass(frozen=True)
class DeviceLayer:
    """One block's norm vectors and linears on the device."""

    attn_norm: object
    attn_q: DeviceLinear
    attn_k: DeviceLinear
    attn_v: DeviceLinear
    attn_sub_norm: object
    attn_output: DeviceLinear
    ffn_norm: object
    ffn_gate: DeviceLinear
    ffn_up: DeviceLinear
    ffn_sub_norm: object
    ffn_down: DeviceLinear


class DeviceWeights(NamedTuple):
    """Weights on the device, field for field; the tied head is token_embd's upload."""

    token_embd: DeviceLinear
    output_norm: object  # device array (n_embd,)
    output: DeviceLinear
    layers: tuple[DeviceLayer, ...]


def upload_weights(w: Weights) -> DeviceWeights:
    """Every weight on the device, uploaded once; the tied head shares token_embd's upload."""
    layers = []
    for layer in w.layers:
        parts = {}
        for name in Layer.__dataclass_fields__:
            value = getattr(layer, name)
            parts[name] = _upload(value, True) if name in _LINEAR_FIELDS else cuda.to_device(value)
        layers.append(DeviceLayer(**parts))
    embd = _upload(w.token_embd, False)
    head = embd if w.output is w.token_embd else _upload(w.output, False)
    return DeviceWeights(embd, cuda.to_device(w.output_norm), head, tuple(layers))


class DeviceKVCache(KVCache):
    """Per-layer f32 K and V on the device, both (n_ctx, n_head_kv·head_dim) by position; cells 0..n_past-1 valid."""

    def __init__(self, n_layer: int, n_ctx: int, n_embd_kv: int) -> None:
        self.n_ctx = n_ctx
        self.dtype = "f32"
        self.blocked = False
        self.k = [cuda.device_array((n_ctx, n_embd_kv), np.float32) for _ in range(n_layer)]
        self.v = [cuda.device_array((n_ctx, n_embd_kv), np.float32) for _ in range(n_layer)]
        self.n_past = 0


class DeviceState:
    """Device activation buffers for up to n_ubatch tokens, allocated once; forward uses row slices [:T]."""

    def __init__(self, c: ModelConfig, n_ubatch: int, n_ctx: int) -> None:
        B, e, kv, ff = n_ubatch, c.n_embd, c.n_embd_kv, c.n_ff
        f32 = np.float32
        self.h = cuda.device_array((B, e), f32)  # (B, n_embd) residual stream
        self.x = cuda.device_array((B, e), f32)  # (B, n_embd) normed input of a block half
        self.q = cuda.device_array((B, e), f32)  # (B, n_head·hd)
        self.k = cuda.device_array((B, kv), f32)  # (B, n_head_kv·hd)
        self.v = cuda.device_array((B, kv), f32)  # (B, n_head_kv·hd)
        self.att = cuda.device_array((B, e), f32)  # (B, n_embd) attention output (kqv_out)
        self.proj = cuda.device_array((B, e), f32)  # (B, n_embd) o_proj / down_proj output
        self.gate = cuda.device_array((B, ff), f32)  # (B, n_ff)
        self.up = cuda.device_array((B, ff), f32)  # (B, n_ff)
        self.ffn = cuda.device_array((B, ff), f32)  # (B, n_ff) act(gate)·up, then its sub-norm
        self.scores = cuda.device_array((B, c.n_head, n_ctx), f32)  # (B, n_head, n_ctx) scores, then probabilities
        self.logits = cuda.device_array((B, c.n_vocab), f32)  # (B, n_vocab)
        # per-token int8 input of the BitLinears, by width K: (q i8 (B, K), s f32 (B,), act_sum i32 (B,))
        self.i8 = {K_: (cuda.device_array((B, K_), np.int8), cuda.device_array(B, f32), cuda.device_array(B, np.int32))
                   for K_ in {e, ff}}
        self.n_ubatch = B


@dataclass
class CudaModel(Model):
    """A Model whose forward runs on a CUDA GPU (or numba's simulator); same config, numerics and file views."""

    dev: DeviceWeights | None = None  # upload_weights(weights)

    def __post_init__(self) -> None:
        super().__post_init__()
        half = self.config.n_rot // 2
        cos, sin = np.empty((self.kv.n_ctx, half), np.float32), np.empty((self.kv.n_ctx, half), np.float32)
        rope.direct_tables(self.inv_freq, cos, sin)  # libm cosf/sinf on the host, the CPU engine's values
        self.rope_tables = (cuda.to_device(cos), cuda.to_device(sin))  # (n_ctx, n_rot/2) each

    @classmethod
    def create(cls, config: ModelConfig, numerics: Numerics, n_threads: int, weights: Weights, n_ctx: int,
               n_ubatch: int, path: Path, gguf: GGUFFile, layout: Layout, device: Device) -> CudaModel:
        """A model on `device`: the file's weights uploaded, a device KV cache of n_ctx cells, device buffers."""
        kv = DeviceKVCache(config.n_layer, n_ctx, config.n_embd_kv)
        state = DeviceState(config, n_ubatch, n_ctx)
        return cls(config, numerics, n_threads, weights, kv, state, path, gguf, layout, device, upload_weights(weights))

    # -- public API (forward is Model's: it runs this class's _ubatch) ------------------------------------------------

    def describe(self) -> dict:
        """Model.describe with the device and the CUDA kernels instead of the CPU ISA."""
        return {**super().describe(), "kernel_isa": "cuda", "device": self.device.describe()}

    # -- the network ---------------------------------------------------------------------------------------------------

    def _ubatch(self, tokens: np.ndarray, pos0: int, want: str, trace: Trace | None) -> np.ndarray | None:
        """One ubatch of T tokens at positions pos0..: the whole graph on the device, the logits copied back once."""
        T = len(tokens)
        embd = self.dev.token_embd
        h = self.state.h[:T]  # (T, n_embd) residual stream
        K.launch(K.embed, T * self.config.n_embd, cuda.to_device(tokens), embd.data, embd.host.fmt is formats.F16, h)
        for il, layer in enumerate(self.dev.layers):
            attn_out = self._attention_half(layer, il, h, pos0, trace)  # (T, n_embd)
            if il == self.config.n_layer - 1 and want != "all":
                if want == "none":
                    return None
                h, attn_out = h[T - 1 :], attn_out[T - 1 :]  # only the output row from here on, as the CPU engine
            self._ffn_half(layer, il, h, attn_out, trace)
        return self._head(h, trace)

    def _attention_half(self, layer: DeviceLayer, il: int, h, pos0: int, trace: Trace | None):
        """RMSNorm → Q, K, V → RoPE(Q, K) → KV cache → causal softmax(QKᵀ/√d)·V → sub-norm → o_proj."""
        c, s = self.config, self.state
        T = h.shape[0]
        x, q, k, v, att, out = s.x[:T], s.q[:T], s.k[:T], s.v[:T], s.att[:T], s.proj[:T]
        self._rmsnorm(h, layer.attn_norm, x)  # x: (T, n_embd)
        _fire(trace, "attn_norm", il, x)
        i8 = self._quantize(x)  # BitNet: Q, K and V quantize the same attn_norm output
        self._matmul(layer.attn_q, i8, q)  # q: (T, n_head·hd)
        self._matmul(layer.attn_k, i8, k)  # k: (T, n_head_kv·hd)
        self._matmul(layer.attn_v, i8, v)  # v: (T, n_head_kv·hd)
        K.launch(K.rope_neox, T * c.n_head * (c.n_rot // 2), q, pos0, c.n_head, c.head_dim, c.n_rot, *self.rope_tables)
        K.launch(K.rope_neox, T * c.n_head_kv * (c.n_rot // 2), k, pos0, c.n_head_kv, c.head_dim, c.n_rot,
                 *self.rope_tables)
        _fire(trace, "Qcur", il, q)
        _fire(trace, "Kcur", il, k)
        _fire(trace, "Vcur", il, v)
        K.launch(K.store_kv, T * c.n_embd_kv, k, v, pos0, self.kv.k[il], self.kv.v[il])
        n_gqa = c.n_head // c.n_head_kv
        p = s.scores[:T]  # (T, n_head, n_ctx)
        K.launch(K.attn_scores, T * c.n_head * (pos0 + T), q, self.kv.k[il], pos0, n_gqa, c.head_dim,
                 self.attn_scale, p)
        K.launch(K.attn_softmax, T * c.n_head, p, T, pos0)
        K.launch(K.attn_values, T * c.n_embd, p, self.kv.v[il], pos0, n_gqa, c.head_dim, att)  # att: (T, n_embd)
        _fire(trace, "kqv_out", il, att)
        self._rmsnorm(att, layer.attn_sub_norm, x)  # BitNet: RMSNorm of the attention output before o_proj
        _fire(trace, "attn_sub_norm", il, x)
        self._matmul(layer.attn_output, self._quantize(x), out)  # out: (T, n_embd)
        _fire(trace, "attn_out", il, out)
        return out

    def _ffn_half(self, layer: DeviceLayer, il: int, h, attn_out, trace: Trace | None) -> None:
        """h += attn_out; RMSNorm → gate, up → act(gate)·up → sub-norm → down_proj; h += down (in place)."""
        c, s = self.config, self.state
        T = h.shape[0]
        K.launch(K.add_rows, T * c.n_embd, attn_out, h, h)  # h: (T, n_embd) ffn_inp = attn_out + residual
        _fire(trace, "ffn_inp", il, h)
        x, gate, up, f, down = s.x[:T], s.gate[:T], s.up[:T], s.ffn[:T], s.proj[:T]
        self._rmsnorm(h, layer.ffn_norm, x)  # x: (T, n_embd)
        _fire(trace, "ffn_norm", il, x)
        i8 = self._quantize(x)  # BitNet: gate and up quantize the same ffn_norm output
        self._matmul(layer.ffn_gate, i8, gate, "ffn_gate", il, trace)  # gate: (T, n_ff)
        self._matmul(layer.ffn_up, i8, up, "ffn_up", il, trace)  # up: (T, n_ff)
        # BitNet: relu² for 2B-4T (llama.cpp's bitnet graph computes SiLU; docs/NUMERICS.md §11)
        K.launch(K.relu2_glu if c.ffn_act == "relu2" else K.swiglu, T * c.n_ff, gate, up, f)  # f: (T, n_ff)
        _fire(trace, "ffn_sub_out", il, f)
        self._rmsnorm(f, layer.ffn_sub_norm, f)  # BitNet: RMSNorm before down_proj (ffn_sub_norm), n_ff wide
        _fire(trace, "ffn_sub_norm", il, f)
        self._matmul(layer.ffn_down, self._quantize(f), down)  # down: (T, n_embd)
        _fire(trace, "ffn_down", il, down)
        K.launch(K.add_rows, T * c.n_embd, down, h, h)  # h: (T, n_embd) l_out = ffn_down + ffn_inp
        _fire(trace, "l_out", il, h)

    def _head(self, h, trace: Trace | None) -> np.ndarray:
        """Final RMSNorm, then logits against token_embd (tied) or output.weight, copied back: (T, n_vocab)."""
        T = h.shape[0]
        head = self.dev.output
        x = self.state.x[:T]  # (T, n_embd)
        self._rmsnorm(h, self.dev.output_norm, x)
        _fire(trace, "result_norm", -1, x)
        logits = self.state.logits[:T]  # (T, n_vocab)
        if head.host.fmt in FLOAT_HEADS:  # BitNet: the head is not quantized
            K.launch(K.head, T * head.host.rows, head.data, head.host.fmt is formats.F16, head.host.rows,
                     head.host.cols, x, self.numerics.lanes, logits)
            if head.host.scale is not None:
                K.launch(K.scale_rows, T * head.host.rows, logits, np.float32(head.host.scale))
        else:
            self._matmul(head, self._quantize(x), logits)
        out = logits.copy_to_host()
        _fire(trace, "result_output", -1, logits, out)
        return out

    def _rmsnorm(self, x, w, out) -> None:
        K.launch(K.rmsnorm, x.shape[0], x, w, np.float32(self.config.rms_eps), out)

    def _quantize(self, x) -> tuple:
        """x's per-token int8 codes, scales and code sums, in the state's buffers for x's width."""
        T, width = x.shape
        q, s, act_sum = (a[:T] for a in self.state.i8[width])
        K.launch(K.quantize_i8, T, x, q, s, act_sum)
        return q, s, act_sum

    def _matmul(self, lin: DeviceLinear, i8: tuple, out, name: str | None = None, il: int = -1,
                trace: Trace | None = None) -> None:
        """out = BitLinear(W, x) from x's int8 form, then the optional `.scale` (traced before and after if named)."""
        q, s, act_sum = i8
        M, n = lin.host.rows, q.shape[0] * lin.host.rows
        if lin.host.fmt is formats.I2_S:
            K.launch(K.matmul_i2s, n, lin.data, M, lin.host.cols, q, s, act_sum, lin.i2s_scale, out)
        else:
            K.launch(TERNARY_KERNELS[lin.host.fmt], n, lin.data, M, lin.host.cols, q, s, out)
        if name is not None:
            _fire(trace, name, il, out)
        if lin.host.scale is not None:
            K.launch(K.scale_rows, n, out, np.float32(lin.host.scale))
            if name is not None:
                _fire(trace, name + "_s", il, out)


def _fire(trace: Trace | None, name: str, layer: int, array, host: np.ndarray | None = None) -> None:
    """Call trace with a host copy of a device array (or the copy already made); nothing when trace is None."""
    if trace is not None:
        trace(name, layer, host.copy() if host is not None else array.copy_to_host())
