"""`crossval --hf DIR --gguf FILE`: does a GGUF compute the model of the checkpoint it was converted from?

Four stages, each naming what the conversion lost:
1. metadata: the config the GGUF gives llama.cpp (its keys and the architecture's defaults) against config.json;
2. tokenizer: ids of the corpus strings from the checkpoint's tokenizer files as bitnet_ref reads them (llama.cpp's
   algorithms), the GGUF's vocabulary and llama.cpp; transformers' own tokenizer is compared too, without gating (it
   is another implementation of the same files: on sentencepiece vocabularies it tokenizes whitespace-only text
   differently from llama.cpp);
3. weights: every tensor; for a BitLinear the ternary codes (signs of the GGUF's values) against the checkpoint's,
   and the GGUF's scale as a multiple of the checkpoint's (`attn_q of layer 0: GGUF scale = 0.668 × checkpoint
   scale`); float tensors within their storage type's rounding;
4. activations at every crossval point and logits of every position, for three pairs around bitnet_ref on the
   checkpoint (its `bitnet` profile, the model as transformers defines it): transformers on the checkpoint (which
   vouches for bitnet_ref's reading of it), bitnet_ref on the GGUF (same arithmetic, so any difference is the file's),
   and llama.cpp on the GGUF (what users run). The first point beyond its bound names where they part.
Exit 0 when the GGUF is faithful, 1 otherwise (a finding, or an engine that failed: its crash is recorded, not lost).
Gates are in thresholds.toml's [conversion] table.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitnet_ref import formats
from bitnet_ref.checkpoint import Checkpoint, read_checkpoint
from bitnet_ref.config import ModelConfig
from bitnet_ref.constants import KEY_HIDDEN_ACTIVATION, GGMLType
from bitnet_ref.errors import BitnetRefError
from bitnet_ref.files import check_readable, model_identity
from bitnet_ref.gguf_reader import GGUFFile, read_gguf
from crossval import cases as C
from crossval import metrics as M
from crossval import points as P
from crossval.backends import Backend, BackendError, BitnetRefBackend
from crossval.corpus import open_engine

CHECKPOINT, TRANSFORMERS, GGUF, LLAMA = "bitnet_ref[checkpoint]", "transformers", "bitnet_ref[gguf]", "llama.cpp"
PAIRS = (TRANSFORMERS, GGUF, LLAMA)  # each compared with bitnet_ref on the checkpoint
CTX_CAP = 512
RELU2_EXPECTED = "relu2-run-as-silu"  # thresholds.toml: llama.cpp computes SiLU for any `bitnet` file
TOKENIZER_IMPLEMENTATIONS = "tokenizer-implementations"  # transformers' and llama.cpp's tokenizers of one vocabulary
FLOAT_EPS = {GGMLType.F32: 2.0**-24, GGMLType.F16: 2.0**-11, GGMLType.BF16: 2.0**-8}  # unit roundoff of a storage
CONFIG_FIELDS = {  # ModelConfig field -> (config.json name, GGUF name) for the findings
    "n_embd": ("hidden_size", "embedding_length"), "n_ff": ("intermediate_size", "feed_forward_length"),
    "n_layer": ("num_hidden_layers", "block_count"), "n_head": ("num_attention_heads", "attention.head_count"),
    "n_head_kv": ("num_key_value_heads", "attention.head_count_kv"), "head_dim": ("head_dim", "key_length"),
    "rope_base": ("rope_theta", "rope.freq_base"), "rms_eps": ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
    "n_vocab": ("vocab_size", "the token count"), "tied_output": ("tie_word_embeddings", "output.weight absent"),
    "bos_id": ("bos_token_id", "tokenizer.ggml.bos_token_id"),
    "eos_id": ("eos_token_id", "tokenizer.ggml.eos_token_id"),
}


@dataclass
class Finding:
    """One thing the conversion lost (or an engine that could not answer), at a stage."""

    stage: str
    text: str
    expected: str = ""  # the id of the known upstream divergence this is (it does not gate); "" when it gates

    def row(self) -> dict:
        """A findings-table row."""
        return {"stage": self.stage, "finding": self.text, "expected": self.expected or None}


@dataclass
class Check:
    """Everything one conversion check found and measured."""

    findings: list[Finding] = field(default_factory=list)
    weights: list[dict] = field(default_factory=list)
    points: list[dict] = field(default_factory=list)
    logits: list[dict] = field(default_factory=list)
    engines: dict[str, dict] = field(default_factory=dict)

    def add(self, stage: str, text: str, expected: str = "") -> None:
        """Record a finding."""
        self.findings.append(Finding(stage, text, expected))

    @property
    def faithful(self) -> bool:
        """No finding other than known upstream divergences."""
        return not any(not f.expected for f in self.findings)


# -- 1. metadata ----------------------------------------------------------------------------------------------------


def check_metadata(check: Check, ck: Checkpoint, gguf: GGUFFile, gates: dict) -> None:
    """Every config field llama.cpp derives from the GGUF against the checkpoint's."""
    want, got = ModelConfig.from_gguf(ck), ModelConfig.from_gguf(gguf)
    if want.ffn_act != got.ffn_act:
        key = KEY_HIDDEN_ACTIVATION.format(arch=got.arch)
        runs = "SiLU" if got.ffn_act == "silu" else got.ffn_act
        how = (f"no hidden_activation in the GGUF: llama.cpp runs {runs}" if key not in gguf.metadata
               else f"{key} = {got.ffn_act!r} in the GGUF")
        check.add("metadata", f"hidden_act {want.ffn_act} in config.json, {how}")
    for name, (hf_name, gguf_name) in CONFIG_FIELDS.items():
        a, b = getattr(want, name), getattr(got, name)
        if a != b and not (isinstance(a, float) and math.isclose(a, b, rel_tol=gates["config_rel_tol"])):
            check.add("metadata", f"{hf_name} {a} in config.json, {gguf_name} {b} in the GGUF")


# -- 2. tokenizer ---------------------------------------------------------------------------------------------------


def check_tokenizer(check: Check, texts: list[str], tokenizers: dict[str, Callable[[str, bool], list[int]]],
                    references: tuple[str, ...] = ()) -> None:
    """The checkpoint tokenizer's ids against every other tokenizer's, with and without BOS; the first difference.
    A difference from one of the `references` (transformers' own tokenizer on the checkpoint's files) does not gate:
    it is two implementations of the checkpoint's vocabulary, not something the GGUF lost."""
    (base_name, base), *others = tokenizers.items()
    for name, tok in others:
        expected = TOKENIZER_IMPLEMENTATIONS if name in references else ""
        for text, bos in ((text, bos) for text in texts for bos in (True, False)):
            try:
                a, b = base(text, bos), tok(text, bos)
            except BitnetRefError as e:
                check.add("tokenizer", f"{name} cannot tokenize {text[:30]!r}: {str(e).splitlines()[0]}", expected)
                break
            if a != b:
                i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                check.add("tokenizer", f"{text[:30]!r} (bos={bos}): {name} {b[i:i + 3]} vs {base_name} "
                                       f"{a[i:i + 3]} at index {i}", expected)
                break


# -- 3. weights -----------------------------------------------------------------------------------------------------


def short_name(name: str) -> str:
    """`attn_q of layer 0` for blk.0.attn_q.weight; the bare name elsewhere."""
    parts = name.removesuffix(".weight").split(".")
    return f"{parts[2]} of layer {parts[1]}" if parts[0] == "blk" else parts[0]


def check_weights(check: Check, ck: Checkpoint, gguf: GGUFFile, gates: dict) -> None:
    """Every checkpoint tensor against the GGUF's: presence, shape, ternary codes and scale ratio, float values."""
    lost: list[str] = []
    for name, info in ck.tensors.items():
        g = gguf.tensors.get(name)
        if g is None or g.shape != info.shape:
            lost.append(f"{short_name(name)}: {'missing' if g is None else f'shape {g.shape}'} in the GGUF, "
                        f"{info.shape} in the checkpoint")
            continue
        w = formats.get(g.type).decode(gguf.tensor_bytes(name), g.shape).reshape(info.rows, info.cols)
        row = _bitlinear_row(ck, name, w) if name in ck.bitlinears else _float_row(ck, name, w)
        row |= {"tensor": name, "gguf_type": g.type.name}
        check.weights.append(row)
        lost += _weight_findings(name, row, gates)
    for text in lost[: gates["max_listed"]]:
        check.add("weights", text)
    if len(lost) > gates["max_listed"]:
        check.add("weights", f"and {len(lost) - gates['max_listed']} more tensors")


def _bitlinear_row(ck: Checkpoint, name: str, w: np.ndarray) -> dict:
    """Code agreement and scale ratio of one BitLinear: codes are the GGUF values' signs, the ratio |w| / scale."""
    t, scale = ck.ternary(name)
    codes = np.sign(w).astype(np.int8)
    nz = np.abs(w[codes != 0])
    ratio = nz / np.float32(scale) if nz.size else np.ones(1, np.float32)
    return {"kind": "bitlinear", "checkpoint_scale": scale, "code_agreement": float(np.mean(codes == t)),
            "scale_ratio": float(np.median(ratio)), "scale_ratio_min": float(ratio.min()),
            "scale_ratio_max": float(ratio.max())}


def _float_row(ck: Checkpoint, name: str, w: np.ndarray) -> dict:
    """Largest difference of a float tensor relative to its largest value (storage rounding is expected)."""
    info = ck.tensors[name]
    ref = formats.get(info.type).decode(ck.tensor_bytes(name), info.shape).reshape(w.shape)
    scale = float(np.abs(ref).max()) or 1.0
    return {"kind": "float", "max_rel_diff": float(np.abs(w - ref).max() / scale)}


def _weight_findings(name: str, row: dict, gates: dict) -> list[str]:
    """What a weights row says the conversion lost."""
    out = []
    if row["kind"] == "bitlinear":
        if row["code_agreement"] < gates["code_agreement"]:
            out.append(f"{short_name(name)}: {100 * (1 - row['code_agreement']):.2f}% of ternary codes differ "
                       "from the checkpoint's")
        if abs(row["scale_ratio"] - 1) > gates["scale_ratio_tol"]:
            out.append(f"{short_name(name)}: GGUF scale = {row['scale_ratio']:.3f} × checkpoint scale")
    else:
        bound = 2 * FLOAT_EPS.get(GGMLType[row["gguf_type"]], gates["config_rel_tol"])
        if row["max_rel_diff"] > max(bound, gates["config_rel_tol"]):
            out.append(f"{short_name(name)}: values differ by {row['max_rel_diff']:.2e} of the largest "
                       f"({row['gguf_type']} rounds by at most {bound / 2:.1e})")
    return out


# -- 4. activations and logits --------------------------------------------------------------------------------------


def compare_pair(check: Check, name: str, base: Backend, other: Backend, tokens: list[int], n_layer: int,
                 gates: dict, prompt: str, expected: dict | None = None) -> None:
    """Every point and the logits of one engine against bitnet_ref on the checkpoint; the first divergence. A first
    divergence where `expected` (a thresholds.toml [[expected]] entry) says this engine diverges is recorded as that
    known divergence, which does not gate."""
    wanted = P.all_points(n_layer)
    try:
        a, b = base.capture(tokens, wanted), other.capture(tokens, wanted)
        la, lb = base.eval(tokens), other.eval(tokens)
    except BackendError as e:
        check.add("engines", f"{name}: {str(e).splitlines()[0]}")
        return
    first = where = None
    for point, layer in wanted:
        if (point, layer) not in a or (point, layer) not in b:
            continue
        m, _ = M.compare(b[(point, layer)], a[(point, layer)])
        bound = gates["nmse"].get(point, gates["nmse"]["default"])
        check.points.append({"pair": name, "prompt": prompt, "point": point, "layer": layer, **m, "bound": bound})
        if m["nmse"] > bound and first is None:
            where = (point, layer)
            first = (f"{name} parts from the checkpoint's model at {_where(point, layer)}: "
                     f"NMSE {m['nmse']:.1e} > {bound:.0e}")
    whole, rows = M.compare(lb, la)
    worst = int(np.argmin(rows["pearson"]))
    check.logits.append({"pair": name, "prompt": prompt, "logits_r": whole["pearson"],
                         "logits_r_min": float(rows["pearson"][worst]), "worst_position": worst,
                         "logits_nmse": whole["nmse"], "max_abs_rel": float(np.max(rows["max_abs_rel"])),
                         "top1_agree": float(np.mean(la.argmax(1) == lb.argmax(1)))})
    hit = expected and where and where[1] == expected["layer"] and where[0] in expected["points"]
    known = expected if hit else None
    note = f" (the expected divergence {known['id']} of thresholds.toml)" if known else ""
    if whole["pearson"] < gates["logits_r"] or rows["pearson"][worst] < gates["logits_r_position"]:
        check.add("logits", (first + "; " if first else f"{name}: ") +
                  f"logits r {whole['pearson']:.5f} (worst position {worst}: {rows['pearson'][worst]:.5f}){note}",
                  known["id"] if known else "")
    elif first:
        check.add("activations", first + note, known["id"] if known else "")


def _where(point: str, layer: int) -> str:
    return f"head {point}" if layer == P.HEAD_LAYER else f"layer {layer} {point}"


# -- the run --------------------------------------------------------------------------------------------------------


def run_check(hf_dir: Path, gguf_path: Path, th: dict, *, threads: int = 2, timeout: float = 1800.0,
              prompts: tuple[str, ...] = ("hello", "mixed")) -> Check:
    """All four stages, gated by thresholds `th` (its [conversion] table); engines that fail become findings."""
    check, gates = Check(), th["conversion"]
    with read_checkpoint(hf_dir) as ck, read_gguf(gguf_path) as gguf:
        check_metadata(check, ck, gguf, gates)
        check_weights(check, ck, gguf, gates)
        ck_config, gguf_config = ModelConfig.from_gguf(ck), ModelConfig.from_gguf(gguf)
        n_ctx = min(ck_config.n_ctx, CTX_CAP)
    relu2 = next((e for e in th.get("expected", []) if e["id"] == RELU2_EXPECTED), None)
    if not (ck_config.ffn_act == gguf_config.ffn_act == "relu2"):
        relu2 = None  # llama.cpp's SiLU is expected only where the file itself says relu²
    base = BitnetRefBackend(hf_dir, numerics="bitnet", n_threads=threads, n_ctx=n_ctx)
    engines: dict[str, Backend] = {GGUF: BitnetRefBackend(gguf_path, numerics="bitnet", n_threads=threads, n_ctx=n_ctx)}
    for name, path in ((TRANSFORMERS, hf_dir), (LLAMA, gguf_path)):
        try:
            engines[name] = open_engine(name, path, numerics="bitnet", threads=threads, n_ctx=n_ctx, timeout=timeout)
        except BackendError as e:
            check.add("engines", f"{name} cannot load: {str(e).splitlines()[0]}")
    try:
        check.engines = {CHECKPOINT: base.describe(), **{n: _describe(e) for n, e in engines.items()}}
        texts = [*C.CORPUS, *(C.PROMPTS[p] for p in prompts)]
        check_tokenizer(check, texts, {CHECKPOINT: base.tokenize, **{n: e.tokenize for n, e in engines.items()}},
                        references=(TRANSFORMERS,))
        for prompt in prompts:
            tokens = base.tokenize(C.PROMPTS[prompt], True)
            for name in PAIRS:
                if name in engines:
                    compare_pair(check, name, base, engines[name], tokens, base.config.n_layer, gates, prompt,
                                 relu2 if name == LLAMA else None)
    finally:
        for e in engines.values():
            getattr(e, "close", lambda: None)()
    return check


def _describe(engine: Backend) -> dict:
    """An engine's description, or the error that kept it from giving one."""
    try:
        return engine.describe()
    except BackendError as e:
        return {"error": str(e).splitlines()[0]}


def main(args: argparse.Namespace) -> int:
    """Run the check, write records and the report, print the findings; 0 when the GGUF is faithful."""
    import pandas as pd
    from rich.console import Console
    from rich.markup import escape

    from crossval.thresholds import load_thresholds
    from reports import records

    console = Console()
    try:
        hf_dir, gguf_path = Path(args.hf), Path(args.gguf)
        check_readable(gguf_path)
        th = load_thresholds(args.thresholds)
        run = records.new_run("conversion", args.out)
        console.print(f"records: {run.path}")
        start = time.perf_counter()
        check = run_check(hf_dir, gguf_path, th, threads=args.threads, timeout=args.ref_timeout)
    except BitnetRefError as e:
        console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        return 1
    faithful = check.faithful
    for name in ("weights", "points", "logits"):
        run.write_table(name, pd.DataFrame(getattr(check, name)))
    run.write_table("findings", pd.DataFrame([f.row() for f in check.findings]))
    run.write_meta({"provenance": records.provenance(), "args": {k: str(v) for k, v in vars(args).items()},
                    "thresholds": th["conversion"], "engines": check.engines, "verdict": "pass" if faithful else "fail",
                    "complete": True, "seconds": round(time.perf_counter() - start, 1),
                    "models": {str(hf_dir): model_identity(hf_dir), str(gguf_path): model_identity(gguf_path)},
                    "findings": [f.row() for f in check.findings]})
    for row in check.logits:
        console.print(f"{escape(row['pair']):>16} vs {escape(CHECKPOINT)} ({row['prompt']}): logits r "
                      f"{row['logits_r']:.6f}, worst position r {row['logits_r_min']:.6f}, "
                      f"max|Δ|/rms {row['max_abs_rel']:.1e}", soft_wrap=True)
    for f in check.findings:
        style = "yellow" if f.expected else "red"
        console.print(f"[{style}]{f.stage}{' (expected)' if f.expected else ''}:[/] {escape(f.text)}", soft_wrap=True)
    if not args.no_report:
        from reports.html import build_index, build_report

        console.print(f"report: {build_report(run.path)}")
        console.print(f"index: {build_index(args.out)}")
    expected = sorted({f.expected for f in check.findings if f.expected})
    also = f" (known upstream divergences: {', '.join(expected)})" if expected else ""
    verdict = f"[green]faithful[/]: the GGUF computes the checkpoint's model{also}" if faithful else \
        f"[bold red]not faithful[/]: {sum(not f.expected for f in check.findings)} finding(s)"
    console.print(f"{escape(str(gguf_path))} vs {escape(str(hf_dir))}: {verdict}", soft_wrap=True)
    return 0 if faithful else 1

