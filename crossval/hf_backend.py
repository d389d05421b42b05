"""HF transformers' BitNetForCausalLM as a crossval reference; the only crossval module that imports torch.

It runs a Hugging Face checkpoint directory (config.json with its quantization_config, safetensors, tokenizer.json) as
the model's authors do: the quantization_config kept, in float32 (bf16 rounds q/s_x, docs/NUMERICS.md §3), eager
attention, one batch of one sequence from an empty cache per call. Activations come from forward hooks on the modules
that hold each capture point (the table of docs/NUMERICS.md §6); Qcur and Kcur are the q/k projections rotated by the
model's own rotary embedding.

torch.compile: transformers wraps BitNet's unpacking and its weight and activation quantizers in `torch.compile`. On
CPU inductor builds C++ kernels for them: measured with torch 2.13.0 on 2 cores, 10-20 s per process on a cold cache
and again for the first new sequence length, 2-4 s warm. The compiled and eager paths gave the same logits bit for bit
on packed checkpoints and differed by float order (~2e-6) on online ones (an ulp can then move an int8 tie). By
default this backend disables dynamo for the whole process before its first forward, so the quantizers run eagerly,
as written in the source; `torch_compile=True` keeps transformers' compiled path. describe() records which ran.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BitNetForCausalLM
from transformers.models.bitnet.modeling_bitnet import apply_rotary_pos_emb

from crossval import points as P
from crossval.backends import BackendError

DTYPE = torch.float32
ATTN_IMPLEMENTATION = "eager"

# point -> (module path under a decoder layer, "in" for the module's input or "out" for its output)
LAYER_HOOKS = {
    "attn_norm": ("input_layernorm", "out"),
    "Qcur": ("self_attn.q_proj", "out"),  # rotated after the forward (_rotate)
    "Kcur": ("self_attn.k_proj", "out"),
    "Vcur": ("self_attn.v_proj", "out"),
    "kqv_out": ("self_attn.attn_sub_norm", "in"),
    "attn_sub_norm": ("self_attn.attn_sub_norm", "out"),
    "attn_out": ("self_attn.o_proj", "out"),
    "ffn_inp": ("post_attention_layernorm", "in"),
    "ffn_norm": ("post_attention_layernorm", "out"),
    "ffn_gate": ("mlp.gate_proj", "out"),
    "ffn_up": ("mlp.up_proj", "out"),
    "ffn_sub_out": ("mlp.ffn_sub_norm", "in"),
    "ffn_sub_norm": ("mlp.ffn_sub_norm", "out"),
    "ffn_down": ("mlp.down_proj", "out"),
    "l_out": ("", "out"),
}
HEAD_HOOKS = {"result_norm": ("model.norm", "out"), "result_output": ("lm_head", "out")}


class HFBackend:
    """transformers' BitNetForCausalLM on one checkpoint directory, float32, eager attention, on CPU.

    `n_ctx` caps the tokens of one call (default: the config's max_position_embeddings). `torch_compile=False`
    disables torch dynamo process-wide (see the module docstring): the first forward of a process decides, later
    changes do not take.
    `echo_log` is accepted for symmetry with the other references (transformers logs to stderr already).
    """

    name = "transformers"

    def __init__(self, path: str | Path, *, n_threads: int = 2, n_ctx: int | None = None, torch_compile: bool = False,
                 echo_log: bool = False):
        self.path = Path(path)
        self.n_threads = n_threads
        self.torch_compile = torch_compile
        torch._dynamo.config.disable = not torch_compile
        torch.set_num_threads(n_threads)
        if not self.path.is_dir():
            raise BackendError(f"transformers cannot load {self.path}: not a checkpoint directory")
        try:
            self.model = BitNetForCausalLM.from_pretrained(self.path, dtype=DTYPE, local_files_only=True,
                                                           attn_implementation=ATTN_IMPLEMENTATION)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loading failure is this backend's one-line error
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BackendError(f"transformers cannot load {self.path}: {type(exc).__name__}: {cause}") from exc
        # transformers 5.25 leaves the unconverted bf16 tensors (embeddings, norms) of a packed-autobitlinear
        # checkpoint in bf16 despite dtype=float32 (then F.linear fails on mixed dtypes); the cast is exact
        self.model.to(DTYPE).eval()
        self.config = self.model.config
        self.n_ctx = n_ctx or self.config.max_position_embeddings
        bos = self.tokenizer.bos_token_id
        self.bos_id = self.config.bos_token_id if bos is None else bos

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """The checkpoint's tokenizer without its template (special tokens in the text parsed), bos prepended."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ([self.bos_id] if add_bos else []) + list(ids)

    def _fit(self, n_tokens: int) -> None:
        """Refuse a call that needs more than n_ctx positions."""
        if n_tokens > self.n_ctx:
            raise BackendError(f"{n_tokens} tokens exceed n_ctx {self.n_ctx}")

    def _ids(self, tokens: list[int]) -> torch.Tensor:
        """One sequence as a (1, n_tokens) batch."""
        self._fit(len(tokens))
        return torch.tensor([list(tokens)], dtype=torch.long)

    @torch.inference_mode()
    def eval(self, tokens: list[int]) -> np.ndarray:
        """Logits of every position, (n_tokens, n_vocab) f32, with no cache."""
        logits = self.model(self._ids(tokens), use_cache=False).logits
        return logits[0].float().numpy().copy()

    @torch.inference_mode()
    def capture(self, tokens: list[int], points: Iterable[tuple[str, int]]) -> dict[tuple[str, int], np.ndarray]:
        """Activations at the requested points from forward hooks; hooks are removed before returning."""
        wanted = list(points)
        got: dict[tuple[str, int], torch.Tensor] = {}
        handles = [self._hook(point, layer, got) for point, layer in wanted if self._known(point, layer)]
        try:
            self.model(self._ids(tokens), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        self._rotate(got, len(tokens))
        return {key: got[key].reshape(len(tokens), -1).float().numpy().copy() for key in wanted if key in got}

    def _known(self, point: str, layer: int) -> bool:
        """Whether a (point, layer) exists in this model."""
        if layer == P.HEAD_LAYER:
            return point in HEAD_HOOKS
        return point in LAYER_HOOKS and 0 <= layer < self.config.num_hidden_layers

    def _hook(self, point: str, layer: int, got: dict) -> torch.utils.hooks.RemovableHandle:
        """A hook that stores the input or output of the module holding (point, layer) under got[(point, layer)]."""
        if layer == P.HEAD_LAYER:
            module_path, side = HEAD_HOOKS[point]
        else:
            sub, side = LAYER_HOOKS[point]
            module_path = f"model.layers.{layer}" + (f".{sub}" if sub else "")
        module = self.model.get_submodule(module_path)
        if side == "in":
            return module.register_forward_pre_hook(lambda _m, args: got.__setitem__((point, layer), args[0]))
        return module.register_forward_hook(
            lambda _m, _args, out: got.__setitem__((point, layer), out[0] if isinstance(out, tuple) else out))

    def _rotate(self, got: dict, n_tokens: int) -> None:
        """Qcur/Kcur: the hooked q/k projections per head, rotated by the model's rotary embedding at 0..n-1."""
        head_dim = self.model.model.layers[0].self_attn.head_dim
        pos = torch.arange(n_tokens).unsqueeze(0)
        for (point, layer), value in list(got.items()):
            if point in ("Qcur", "Kcur"):
                heads = value.view(1, n_tokens, -1, head_dim).transpose(1, 2)  # (1, n_head, n_tokens, head_dim)
                cos, sin = self.model.model.rotary_emb(heads, pos)
                rotated, _ = apply_rotary_pos_emb(heads, heads, cos, sin)
                got[(point, layer)] = rotated.transpose(1, 2).reshape(n_tokens, -1)

    @torch.inference_mode()
    def greedy(self, tokens: list[int], n_new: int) -> tuple[list[int], np.ndarray]:
        """Prefill, then n_new one-token steps through transformers' KV cache, always taking the argmax."""
        self._fit(len(tokens) + max(n_new - 1, 0))
        step, cache = self._ids(tokens), None
        out, rows = [], []
        while len(out) < n_new:
            result = self.model(step, cache=cache, use_cache=True, logits_to_keep=1)
            cache = result.cache
            rows.append(result.logits[0, -1].float().numpy().copy())
            out.append(int(np.argmax(rows[-1])))
            step = torch.tensor([[out[-1]]], dtype=torch.long)
        return out, np.stack(rows) if rows else np.zeros((0, self.config.vocab_size), np.float32)

    def describe(self) -> dict:
        """Versions, dtype, attention, quantization and threads: what decides transformers' numbers."""
        quant = getattr(self.config, "quantization_config", None)
        return {
            "backend": self.name,
            "path": str(self.path),
            "torch": torch.__version__,
            "transformers": metadata.version("transformers"),
            "dtype": str(DTYPE).removeprefix("torch."),
            "attn_implementation": self.config._attn_implementation,
            "quantization_config": _plain(quant.to_dict() if hasattr(quant, "to_dict") else quant),
            "hidden_act": self.config.hidden_act,
            "n_layer": self.config.num_hidden_layers,
            "n_vocab": self.config.vocab_size,
            "n_ctx": self.n_ctx,
            "n_threads": self.n_threads,
            "torch_compile": self.torch_compile,
            "dynamo_disabled": bool(torch._dynamo.config.disable),
        }


def _plain(config: dict | None) -> dict | None:
    """A quantization config with its enum values as their strings (for JSON records)."""
    return None if config is None else {k: getattr(v, "value", v) for k, v in config.items()}
