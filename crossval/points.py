"""Capture points and the map between the engines (docs/NUMERICS.md §6).

bitnet_ref's trace hook fires `trace(point, layer, array)` with llama.cpp's names; llama.cpp's eval callback sees
`<point>-<layer>` (plain `<point>` for the head) and several nodes per name, told apart by their op.
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD_LAYER = -1  # layer index of result_norm / result_output


@dataclass(frozen=True)
class Point:
    """One capture point: its name, whether it repeats per layer, and the llama.cpp ops that carry it."""

    name: str
    per_layer: bool
    ops: tuple[str, ...]  # ggml_op_desc of the node that holds the value, preferred first
    meaning: str


# In comparison order: the first point beyond its bound in this order is the reported divergence.
POINTS: tuple[Point, ...] = (
    Point("attn_norm", True, ("MUL",), "input RMSNorm · attn_norm"),
    Point("Qcur", True, ("ROPE",), "q after RoPE"),
    Point("Kcur", True, ("ROPE",), "k after RoPE"),
    Point("Vcur", True, ("MUL_MAT", "MUL", "RESHAPE"), "v projection"),
    Point("kqv_out", True, ("CONT", "RESHAPE"), "attention output before attn_sub_norm"),
    Point("attn_sub_norm", True, ("MUL",), "RMSNorm · attn_sub_norm (BitNet)"),
    Point("attn_out", True, ("MUL_MAT", "MUL"), "o_proj output"),
    Point("ffn_inp", True, ("ADD",), "residual after attention"),
    Point("ffn_norm", True, ("MUL",), "RMSNorm · ffn_norm"),
    Point("ffn_gate", True, ("MUL_MAT",), "gate projection"),
    Point("ffn_up", True, ("MUL_MAT",), "up projection"),
    Point("ffn_sub_out", True, ("SWIGLU", "GLU", "MUL"), "act(gate) · up"),
    Point("ffn_sub_norm", True, ("MUL",), "RMSNorm · ffn_sub_norm (BitNet)"),
    Point("ffn_down", True, ("MUL_MAT", "MUL"), "down projection"),
    Point("l_out", True, ("ADD",), "layer output"),
    Point("result_norm", False, ("MUL",), "final RMSNorm · output_norm"),
    Point("result_output", False, ("MUL_MAT",), "logits"),
)
BY_NAME: dict[str, Point] = {p.name: p for p in POINTS}
LAYER_POINTS = tuple(p.name for p in POINTS if p.per_layer)
HEAD_POINTS = tuple(p.name for p in POINTS if not p.per_layer)


def all_points(n_layer: int) -> list[tuple[str, int]]:
    """Every (point, layer) of a model, in comparison order."""
    out = [(p, il) for il in range(n_layer) for p in LAYER_POINTS]
    return out + [(p, HEAD_LAYER) for p in HEAD_POINTS]




def llama_name(point: str, layer: int) -> str:
    """llama.cpp's tensor name for a point: `<point>-<layer>`, or the bare name for the head."""
    return point if layer == HEAD_LAYER else f"{point}-{layer}"




def pick_op(point: str, ops_seen: list[str]) -> str | None:
    """Which of the ops llama.cpp produced under a point's name holds the point's value (None: not observed)."""
    for op in BY_NAME[point].ops:
        if op in ops_seen:
            return op
    return None


def describe() -> list[dict]:
    """The point table as records (for run.json)."""
    return [{"point": p.name, "per_layer": p.per_layer, "llama_ops": list(p.ops), "meaning": p.meaning} for p in POINTS]
