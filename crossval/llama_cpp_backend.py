"""llama.cpp through llama-cpp-python's low-level API; the only module that imports llama_cpp.

Matching settings (docs/NUMERICS.md §4.9, §8): flash attention off unless asked (recorded), one ubatch for the whole
prompt (n_batch = n_ubatch = n_ctx), logits for every position, the KV cache cleared before every call.
Activations come from the scheduler's eval callback (docs/NUMERICS.md §7): tensors are read through the ggml library
instance that libllama itself loaded, wanted names answer True in the ask phase, and the data phase always answers True.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import llama_cpp
import llama_cpp.llama_cpp as L
import numpy as np

from bitnet_ref.constants import GGML_MAX_DIMS
from crossval import points as P
from crossval.backends import BackendError

LIB_DIR = Path(llama_cpp.__file__).resolve().parent / "lib"
GGML_BASE_SONAME = "libggml-base.so.0"  # libllama's DT_NEEDED name: the same instance (the .so copy is a second one)
FLASH_ATTN_AUTO, FLASH_ATTN_DISABLED, FLASH_ATTN_ENABLED = -1, 0, 1
GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1
GGML_MAX_SRC = 10


class _TensorHead(ctypes.Structure):
    """The leading fields of `struct ggml_tensor` (x86-64: type @0, buffer @8, ne @16, nb @48, op @80, src @152)."""

    _fields_ = [
        ("type", ctypes.c_int32),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int32),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
    ]


def _bind_ggml() -> ctypes.CDLL:
    """libggml-base as libllama loaded it, with the prototypes crossval calls; refuses a second copy."""
    lib = ctypes.CDLL(str(LIB_DIR / GGML_BASE_SONAME))
    protos = {
        "ggml_get_name": ([ctypes.c_void_p], ctypes.c_char_p),
        "ggml_op_desc": ([ctypes.c_void_p], ctypes.c_char_p),
        "ggml_type_name": ([ctypes.c_int], ctypes.c_char_p),
        "ggml_nelements": ([ctypes.c_void_p], ctypes.c_int64),
        "ggml_nbytes": ([ctypes.c_void_p], ctypes.c_size_t),
        "ggml_backend_tensor_get": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t], None),
        "ggml_backend_buffer_name": ([ctypes.c_void_p], ctypes.c_char_p),
        "ggml_version": ([], ctypes.c_char_p),
        "ggml_commit": ([], ctypes.c_char_p),
    }
    for fn, (args, res) in protos.items():
        getattr(lib, fn).argtypes, getattr(lib, fn).restype = args, res
    ours = ctypes.cast(lib.ggml_nbytes, ctypes.c_void_p).value
    theirs = ctypes.cast(L._lib.ggml_nbytes, ctypes.c_void_p).value
    if ours != theirs:
        raise BackendError(f"{LIB_DIR / GGML_BASE_SONAME} is not the ggml instance libllama uses")
    return lib


class _Log:
    """Process-wide llama.cpp log sink: keeps recent lines (errors are quoted in BackendError); with `echo` set (in
    an isolated child, whose stderr is its log file) it also writes them to stderr."""

    lines: list[str] = []
    echo = False

    @staticmethod
    def _sink(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        _Log.lines.append(text.decode("utf-8", "replace"))
        del _Log.lines[:-200]
        if _Log.echo:
            os.write(2, text)

    callback = L.llama_log_callback(_sink)

    @classmethod
    def tail(cls, n: int = 12) -> str:
        """The last n log lines, joined."""
        return "".join(cls.lines[-n:]).strip()


@functools.cache
def _init() -> ctypes.CDLL:
    """One-time backend init, log capture and ggml binding."""
    L.llama_log_set(_Log.callback, ctypes.c_void_p())
    L.llama_backend_init()
    return _bind_ggml()


def read_tensor(ggml: ctypes.CDLL, t: int, n_tokens: int) -> np.ndarray:
    """Copy an F32/F16 ggml tensor out of its backend buffer as f32 (n_tokens, width)."""
    head = _TensorHead.from_address(t)
    ne, nb = list(head.ne), list(head.nb)
    if ggml.ggml_nelements(t) != int(np.prod(ne)) or not head.buffer:
        raise BackendError(f"tensor {ggml.ggml_get_name(t)!r}: struct layout or buffer not as expected")
    if head.type not in (GGML_TYPE_F32, GGML_TYPE_F16):
        raise BackendError(f"tensor {ggml.ggml_get_name(t)!r}: type {ggml.ggml_type_name(head.type)!r} not f32/f16")
    nbytes = ggml.ggml_nbytes(t)
    raw = np.empty(nbytes, np.uint8)
    ggml.ggml_backend_tensor_get(t, raw.ctypes.data, 0, nbytes)
    dtype = np.float32 if head.type == GGML_TYPE_F32 else np.float16
    view = np.ndarray(shape=ne[::-1], dtype=dtype, buffer=raw, strides=nb[::-1])
    return np.array(view, np.float32).reshape(n_tokens, -1)


class LlamaCppBackend:
    """llama.cpp (as vendored by llama-cpp-python) on one GGUF file.

    Defaults are the matching configuration. For timing (bench): `eval_callback=False` (no Python call per graph
    node; capture() is then refused), `flash_attn=None` (llama.cpp's AUTO), `n_ubatch=512`, `perf=True`.
    `extra_bufts` is llama_model_params.use_extra_bufts: off, every weight stays in a plain CPU buffer (the path the
    ggml profile emulates); on, llama.cpp may move weights to CPU_REPACK or AMX buffers with kernels of their own.
    With the eval callback, the buffer type of every weight a MUL_MAT reads is recorded on the first decode.
    `echo_log` copies llama.cpp's log to stderr (set in an isolated child, whose stderr is its log file).
    """

    name = "llama.cpp"

    def __init__(self, path: str | Path, *, n_threads: int = 2, n_ctx: int = 0, flash_attn: bool | None = False,
                 n_ubatch: int | None = None, eval_callback: bool = True, perf: bool = False,
                 extra_bufts: bool = False, echo_log: bool = False):
        _Log.echo = _Log.echo or echo_log
        self._ggml = _init()
        self.path = Path(path)
        self.n_threads = n_threads
        self.flash_attn_type = {True: FLASH_ATTN_ENABLED, False: FLASH_ATTN_DISABLED, None: FLASH_ATTN_AUTO}[flash_attn]
        self.eval_callback = eval_callback
        self._wanted: set[str] = set()
        self._got: dict[tuple[str, str], list[np.ndarray]] = {}
        self._n_tokens = 0
        self._cb_error: BaseException | None = None
        self.extra_bufts = extra_bufts
        self.weight_buffers: dict[str, str] = {}  # weight name -> buffer type name, from the first decode's graph
        self._cb = L.ggml_backend_sched_eval_callback(self._callback)  # referenced for the context's lifetime
        mp = L.llama_model_default_params()
        mp.use_extra_bufts = extra_bufts
        self.model = L.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise BackendError(f"llama.cpp cannot load {self.path}: {_Log.tail()}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.ctx = L.llama_init_from_model(self.model, self._context_params(n_ctx, n_ubatch, perf))
        if not self.ctx:
            L.llama_model_free(self.model)
            self.model = None
            raise BackendError(f"llama.cpp cannot create a context for {self.path}: {_Log.tail()}")
        if eval_callback:
            self.eval([L.llama_vocab_bos(self.vocab) if L.llama_vocab_bos(self.vocab) >= 0 else 0])

    def _context_params(self, n_ctx: int, n_ubatch: int | None, perf: bool) -> L.llama_context_params:
        """Matching settings by default: one ubatch per call, flash attention off, our eval callback."""
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx  # 0: the model's training context
        cp.n_batch = n_ctx or L.llama_model_n_ctx_train(self.model)
        cp.n_ubatch = n_ubatch or cp.n_batch
        cp.n_threads = cp.n_threads_batch = self.n_threads
        cp.flash_attn_type = self.flash_attn_type
        cp.no_perf = not perf
        if self.eval_callback:
            cp.cb_eval = self._cb
            cp.cb_eval_user_data = None
        self.type_k, self.type_v = int(cp.type_k), int(cp.type_v)
        return cp

    def close(self) -> None:
        """Free the context and the model."""
        if getattr(self, "ctx", None):
            L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> LlamaCppBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # -- eval callback --------------------------------------------------------------------------------------------

    def _callback(self, t: int, ask: bool, user_data: int) -> bool:
        """Ask phase: True for wanted names. Data phase: copy the tensor, always True (False stops the split)."""
        try:
            name = self._ggml.ggml_get_name(t).decode()
            if ask:
                self._note_weight_buffer(t)
                return name in self._wanted
            if name in self._wanted:
                op = self._ggml.ggml_op_desc(t).decode()
                self._got.setdefault((name, op), []).append(read_tensor(self._ggml, t, self._n_tokens))
        except BaseException as exc:  # noqa: BLE001 - re-raised after llama_decode returns
            self._cb_error = self._cb_error or exc
        return not ask

    def _note_weight_buffer(self, t: int) -> None:
        """Record the buffer type of the weight (src 0) of a MUL_MAT node, once per weight."""
        head = _TensorHead.from_address(t)
        weight = head.src[0]
        if not weight or self._ggml.ggml_op_desc(t) != b"MUL_MAT":
            return
        name = self._ggml.ggml_get_name(weight).decode()
        if name.endswith(".weight") and name not in self.weight_buffers:
            buf = _TensorHead.from_address(weight).buffer
            self.weight_buffers[name] = self._ggml.ggml_backend_buffer_name(buf).decode() if buf else "none"

    # -- decoding ---------------------------------------------------------------------------------------------------

    def _clear(self) -> None:
        """Empty the KV cache."""
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)

    def _decode(self, tokens: list[int], pos0: int, all_logits: bool) -> np.ndarray:
        """One llama_decode of tokens at pos0..; logits of every position, or of the last only."""
        n = len(tokens)
        batch = L.llama_batch_init(n, 0, 1)
        try:
            for i, tok in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos0 + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if all_logits or i == n - 1 else 0
            batch.n_tokens = n
            self._n_tokens, self._cb_error = n, None
            rc = L.llama_decode(self.ctx, batch)
        finally:
            L.llama_batch_free(batch)
        if self._cb_error is not None:
            raise BackendError(f"eval callback failed: {self._cb_error!r}") from self._cb_error
        if rc != 0:
            raise BackendError(f"llama_decode returned {rc} for {n} tokens at {pos0}: {_Log.tail()}")
        n_out = n if all_logits else 1
        ptr = L.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out * self.n_vocab,)).reshape(n_out, self.n_vocab).copy()

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """llama_tokenize with add_special = add_bos and parse_special = True."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        for _ in range(2):
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, True)
            if n >= 0:
                return list(buf[:n])
            cap = -n
        raise BackendError(f"llama_tokenize kept asking for more room ({cap}) on {len(data)} bytes")

    def eval(self, tokens: list[int]) -> np.ndarray:
        """Logits of every position from an empty cache, (n_tokens, n_vocab) f32."""
        self._clear()
        self._wanted = set()
        return self._decode(list(tokens), 0, all_logits=True)

    def capture(self, tokens: list[int], points: Iterable[tuple[str, int]]) -> dict[tuple[str, int], np.ndarray]:
        """Activations at the requested points; each name's node chosen by op (points.pick_op)."""
        if not self.eval_callback:
            raise BackendError("capture() needs the eval callback; this backend was opened with eval_callback=False")
        wanted = {P.llama_name(p, il): (p, il) for p, il in points}
        self._clear()
        self._wanted, self._got = set(wanted), {}
        try:
            self._decode(list(tokens), 0, all_logits=True)
        finally:
            self._wanted = set()
        by_name: dict[str, dict[str, np.ndarray]] = {}
        for (name, op), parts in self._got.items():
            by_name.setdefault(name, {})[op] = np.concatenate(parts, axis=0)
        out = {}
        for name, (point, layer) in wanted.items():
            op = P.pick_op(point, list(by_name.get(name, {})))
            if op is not None:
                out[(point, layer)] = by_name[name][op]
        self.ops_seen = {name: sorted(ops) for name, ops in by_name.items()}
        return out

    def greedy(self, tokens: list[int], n_new: int) -> tuple[list[int], np.ndarray]:
        """Prefill (last logits only), then n_new one-token decodes taking the argmax."""
        self._clear()
        self._wanted = set()
        step, pos = list(tokens), 0
        out, rows = [], []
        while len(out) < n_new:
            rows.append(self._decode(step, pos, all_logits=False)[-1])
            out.append(int(np.argmax(rows[-1])))
            step, pos = out[-1:], len(tokens) + len(out) - 1
        return out, np.stack(rows) if rows else np.zeros((0, self.n_vocab), np.float32)

    def describe(self) -> dict:
        """Versions, build and system info, context settings: what decides llama.cpp's numbers."""
        desc = ctypes.create_string_buffer(256)
        L.llama_model_desc(self.model, desc, len(desc))
        return {
            "backend": self.name,
            "path": str(self.path),
            "llama_cpp_python": metadata.version("llama_cpp_python"),
            "ggml_version": self._ggml.ggml_version().decode(),
            "ggml_commit": self._ggml.ggml_commit().decode(),
            "system_info": L.llama_print_system_info().decode().strip(),
            "lib_dir": str(LIB_DIR),
            "model_desc": desc.value.decode(),
            "n_params": int(L.llama_model_n_params(self.model)),
            "n_ctx": int(L.llama_n_ctx(self.ctx)),
            "n_batch": int(L.llama_n_batch(self.ctx)),
            "n_ubatch": int(L.llama_n_ubatch(self.ctx)),
            "n_threads": self.n_threads,
            "flash_attn_type": self.flash_attn_type,
            "type_k": self._ggml.ggml_type_name(self.type_k).decode(),
            "type_v": self._ggml.ggml_type_name(self.type_v).decode(),
            "eval_callback": self.eval_callback,
            "use_extra_bufts": self.extra_bufts,
            "weight_buffers": self.weight_buffers,
        }

    def perf_counters(self, reset: bool = False) -> dict:
        """llama.cpp's own timings since the last reset (needs perf=True): prompt/eval ms and token counts."""
        data = L.llama_perf_context(self.ctx)
        out = {k: getattr(data, k) for k in ("t_load_ms", "t_p_eval_ms", "t_eval_ms", "n_p_eval", "n_eval")}
        if reset:
            L.llama_perf_context_reset(self.ctx)
        return out
