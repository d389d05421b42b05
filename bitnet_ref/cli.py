"""The `bitnet-ref` command line: a table of subcommands, each an add-arguments function and a run function.

To add a subcommand, write `add_arguments(parser)` and `run(args, console) -> int` (exit status) in its own module and
add one `Command` line to COMMANDS. Library errors (BitnetRefError) end any command with a one-line message and 1.
A forwarding command (crossval, bench, report) hands every argument after its name, --help included, to its module's
own parser unchanged.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from bitnet_ref import __version__
from bitnet_ref.checkpoint import Checkpoint, read_model_file
from bitnet_ref.config import FFN_ACTS, ModelConfig
from bitnet_ref.constants import (
    KEY_ARCHITECTURE,
    KEY_FILE_TYPE,
    KEY_MERGES,
    KEY_TOKEN_TYPE,
    KEY_TOKENIZER_MODEL,
    KEY_TOKENIZER_PRE,
    KEY_TOKENS,
    TokenType,
)
from bitnet_ref.convert import FORMATS as CONVERT_FORMATS
from bitnet_ref.convert import convert_checkpoint
from bitnet_ref.device import DEVICES
from bitnet_ref.errors import BitnetRefError
from bitnet_ref.generate import GenerationResult, generate, warmup
from bitnet_ref.gguf_reader import GGUFFile
from bitnet_ref.layout import I2S_LAYOUTS
from bitnet_ref.model import load_model
from bitnet_ref.numerics import PROFILES
from bitnet_ref.sampling import SamplerConfig, make_rng, resolve_seed
from bitnet_ref.synth import ARCHS, DIM_NAMES, FORMATS, PRESETS, cached_model, synth_model
from bitnet_ref.tokenizer import Tokenizer
from bitnet_ref.verify import verify


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, how it adds its arguments and how it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Console], int]
    forward: bool = False  # run gets everything after the name, unparsed, as args.args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with argv (sys.argv[1:] when None) and return the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    console = Console(highlight=False)
    try:
        return args.command.run(args, console)
    except BitnetRefError as e:
        # escaped: paths and values in messages may hold brackets that rich would take for markup
        Console(stderr=True, highlight=False).print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True, markup=True)
        return 1


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse argv; a forwarding command's arguments are left to its module's parser, so none is parsed here."""
    argv = list(argv)
    cmd = next((c for c in COMMANDS if c.forward and argv[:1] == [c.name]), None)
    if cmd is not None:
        # argparse would take --help and reject options it does not know (e.g. --quick) before the module saw them
        return argparse.Namespace(command=cmd, args=argv[1:])
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one subparser per entry of COMMANDS."""
    parser = argparse.ArgumentParser(prog="bitnet-ref", description="BitNet b1.58 reference engine tools")
    parser.add_argument("--version", action="version", version=f"bitnet-ref {__version__}")
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(command=cmd)
    return parser


# ----------------------------------------------------------------------------------------------------------------------
# synth


def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `bitnet-ref synth`."""
    p.add_argument("--preset", choices=list(PRESETS), default="tiny", help="model shape preset (default tiny)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="tq2_0", help="weight format (default tq2_0)")
    p.add_argument("--arch", choices=ARCHS, default="bitnet", help="general.architecture (default bitnet)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--vocab", type=Path, help="copy the tokenizer of this vocab-only GGUF (default: built-in BPE)")
    p.add_argument("-o", "--output", type=Path, help="output file (default: the cache, ~/.cache/bitnet-ref/models)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    for name in DIM_NAMES:
        kind = float if name == "rope_base" else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=f"override the preset's {name}")


def run_synth(args: argparse.Namespace, console: Console) -> int:
    """Write (or find in the cache) a synthetic model and report its path."""
    dims = {name: getattr(args, name) for name in DIM_NAMES}
    kwargs = dict(preset=args.preset, fmt=args.fmt, arch=args.arch, seed=args.seed, vocab=args.vocab, **dims)
    start = time.perf_counter()
    with _progress_bar(console, args.quiet) as progress:
        if args.output is None:
            path = cached_model(progress=progress, **kwargs)
        else:
            path = synth_model(args.output, progress=progress, **kwargs)
    seconds = time.perf_counter() - start
    console.print(f"{path}  ({_human_bytes(path.stat().st_size)}, {seconds:.1f} s)", soft_wrap=True)
    return 0


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `bitnet-ref convert`."""
    p.add_argument("checkpoint", type=Path, help="an HF BitNet checkpoint folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="the GGUF file to write")
    p.add_argument("--format", dest="fmt", choices=CONVERT_FORMATS, default="tq2_0",
                   help="format of the BitLinear weights (default tq2_0)")


def run_convert(args: argparse.Namespace, console: Console) -> int:
    """Write a checkpoint as a GGUF that keeps its activation and scales, and report what was written."""
    start = time.perf_counter()
    result = convert_checkpoint(args.checkpoint, args.output, args.fmt)
    console.print(f"{result.line()} ({time.perf_counter() - start:.1f} s)", soft_wrap=True, markup=False)
    return 0


@contextmanager
def _progress_bar(console: Console, quiet: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A synth progress callback drawing a rich bar of bytes written (None when quiet or not on a terminal)."""
    if quiet or not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description:<28}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("header", total=None)

        def update(name: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=name or "header")

        yield update


# ----------------------------------------------------------------------------------------------------------------------
# inspect


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `bitnet-ref inspect`."""
    p.add_argument("file", type=Path, help="a GGUF file or an HF checkpoint folder")
    p.add_argument("--ffn-act", choices=FFN_ACTS, help="override the FFN activation when deriving the config")


def run_inspect(args: argparse.Namespace, console: Console) -> int:
    """Print architecture, config, tokenizer summary and the tensor table of a GGUF file or HF checkpoint folder."""
    with read_model_file(args.file) as g:
        _print_header(console, g)
        _print_config(console, g, args.ffn_act)
        _print_tokenizer(console, g)
        console.print(tensor_table(g))
    return 0


def _print_header(console: Console, g: GGUFFile | Checkpoint) -> None:
    if isinstance(g, Checkpoint):
        info = g.describe()
        console.print(f"[bold]{g.path}[/]  HF checkpoint {info['architectures']}, files {', '.join(info['files'])}",
                      soft_wrap=True)
        console.print(f"BitLinear weights: {info['weights']}; read as architecture {g.arch!r}, "
                      f"{len(g.metadata)} metadata keys, {len(g.tensors)} tensors", soft_wrap=True)
        return
    size = g.path.stat().st_size
    console.print(
        f"[bold]{g.path}[/]  {_human_bytes(size)}  GGUF v{g.version}, alignment {g.alignment}", soft_wrap=True
    )
    console.print(
        f"architecture {g.metadata.get(KEY_ARCHITECTURE)!r}, file_type {g.metadata.get(KEY_FILE_TYPE)}, "
        f"{len(g.metadata)} metadata keys, {len(g.tensors)} tensors",
        soft_wrap=True,
    )


def _print_config(console: Console, g: GGUFFile, ffn_act: str | None) -> None:
    try:
        config = ModelConfig.from_gguf(g, ffn_act=ffn_act)
    except BitnetRefError as e:
        console.print(f"[yellow]no model config:[/] {e}", soft_wrap=True)
        return
    table = Table(title="config", show_header=False, title_justify="left", box=None)
    table.add_column("field", style="cyan", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("source", style="dim")
    info = config.describe()
    sources = info.pop("sources")
    info.pop("ffn_act_reason")  # the source column of ffn_act says it
    for key, value in info.items():
        table.add_row(key, f"{value:.7g}" if isinstance(value, float) else str(value), sources.get(key, ""))
    console.print(table)


def tokenizer_summary(g: GGUFFile) -> dict[str, object]:
    """Model, pre-tokenizer, token and merge counts, token types and special tokens of a file's tokenizer."""
    md = g.metadata
    tokens = md.get(KEY_TOKENS) or []
    types = Counter(_token_type_name(int(t)) for t in md.get(KEY_TOKEN_TYPE, []))
    summary = {
        "model": md.get(KEY_TOKENIZER_MODEL),
        "pre": md.get(KEY_TOKENIZER_PRE),
        "n_tokens": len(tokens),
        "n_merges": len(md.get(KEY_MERGES) or []),
        "token_types": dict(sorted(types.items())),
    }
    for key, value in md.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_id"):
            name = key.removeprefix("tokenizer.ggml.")
            text = tokens[value] if isinstance(value, int) and 0 <= value < len(tokens) else "(out of range)"
            summary[name] = f"{value} {text!r}"
        elif key.startswith("tokenizer.ggml.add_"):
            summary[key.removeprefix("tokenizer.ggml.")] = value
    return summary


def _print_tokenizer(console: Console, g: GGUFFile) -> None:
    summary = tokenizer_summary(g)
    if summary["model"] is None:
        console.print("tokenizer: none", soft_wrap=True)
        return
    console.print("tokenizer: " + ", ".join(f"{k} {v}" for k, v in summary.items()), soft_wrap=True)


def _token_type_name(t: int) -> str:
    try:
        return TokenType(t).name
    except ValueError:
        return str(t)


def tensor_table(g: GGUFFile) -> Table:
    """Rich table of a file's tensors: name, type, shape, bytes, bits per weight, and a total row."""
    table = Table(title=f"{len(g.tensors)} tensors", title_justify="left")
    for col, justify in (
        ("name", "left"),
        ("type", "left"),
        ("shape", "left"),
        ("bytes", "right"),
        ("bits/w", "right"),
    ):
        table.add_column(col, justify=justify)
    for t in g.tensors.values():
        table.add_row(t.name, t.type.name, str(list(t.shape)), f"{t.nbytes:,}", f"{8 * t.nbytes / t.n_elements:.4g}")
    n_bytes = sum(t.nbytes for t in g.tensors.values())
    n_elems = sum(t.n_elements for t in g.tensors.values())
    bits = f"{8 * n_bytes / n_elems:.4g}" if n_elems else "-"
    table.add_section()
    table.add_row("total", "", f"{n_elems:,} weights", f"{n_bytes:,}", bits)
    return table


# ----------------------------------------------------------------------------------------------------------------------
# verify


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `bitnet-ref verify`."""
    p.add_argument("file", type=Path, help="a GGUF file or an HF checkpoint folder")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the one-line verdict")
    p.add_argument("--kernel-config", type=Path, default=None,
                   help="bitnet.cpp's kernel_config.ini to decode TL1/TL2 codes with (default: the one beside it)")


def run_verify(args: argparse.Namespace, console: Console) -> int:
    """Fully validate a model file; exit 0 with a one-line verdict or 1 naming the first problem."""
    verdict = verify(args.file, args.kernel_config)
    if args.json:
        console.out(json.dumps(asdict(verdict) | {"verdict": verdict.line()}, indent=2), highlight=False)
    else:
        style = "green" if verdict.ok else "red"
        console.print(verdict.line(), style=style, soft_wrap=True, markup=False)
    return 0 if verdict.ok else 1


# ----------------------------------------------------------------------------------------------------------------------
# generate


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `bitnet-ref generate`."""
    p.add_argument("-m", "--model", type=Path, required=True, help="a GGUF file or an HF checkpoint folder")
    p.add_argument("-p", "--prompt", required=True, help="the prompt text")
    p.add_argument("-n", "--n-predict", type=int, default=64, help="tokens to generate (default 64)")
    defaults = SamplerConfig()
    p.add_argument("--temp", type=float, default=defaults.temperature, help="temperature; <= 0 is greedy")
    p.add_argument("--top-k", type=int, default=defaults.top_k)
    p.add_argument("--top-p", type=float, default=defaults.top_p)
    p.add_argument("--min-p", type=float, default=defaults.min_p)
    p.add_argument("--repeat-penalty", type=float, default=defaults.repeat_penalty)
    p.add_argument("--seed", type=int, default=None, help="RNG seed (else BITNET_SEED / BITNET_DETERMINISTIC / fresh)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--numerics", choices=sorted(PROFILES), default="bitnet", help="numerics profile (default bitnet)")
    p.add_argument("--ffn-act", choices=FFN_ACTS, default=None, help="override the FFN activation")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="cpu, cuda (a CUDA GPU; the bitnet profile) or auto (the GPU if there is one) (default cpu)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    add_layout_arguments(p)


def add_layout_arguments(p: argparse.ArgumentParser) -> None:
    """--i2s-layout and --kernel-config: how to read byte orders a GGUF does not record (bitnet_ref.layout)."""
    p.add_argument("--i2s-layout", choices=list(I2S_LAYOUTS), default="x86",
                   help="I2_S block layout: x86 (128, every published file) or arm (64, ARM builds after 112f853)")
    p.add_argument("--kernel-config", type=Path, default=None,
                   help="bitnet.cpp's include/kernel_config.ini with the TL1/TL2 tilings "
                        "(default: <model stem>.kernel_config.ini beside the model, if there is one)")


def run_generate(args: argparse.Namespace, console: Console) -> int:
    """Stream a generation, then print its timings and settings."""
    model = load_model(
        args.model,
        numerics=args.numerics,
        n_threads=args.threads,
        ffn_act=args.ffn_act,
        i2s_layout=args.i2s_layout,
        kernel_config=args.kernel_config,
        device=args.device,
    )
    tokenizer = Tokenizer.from_gguf(model.gguf)
    sampler = SamplerConfig(
        temperature=args.temp,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
    )
    seed = resolve_seed(args.seed)
    err = Console(stderr=True, highlight=False)
    err.print(
        f"[dim]{model.numerics} · ffn_act {model.config.ffn_act} ({model.config.ffn_act_source}) · "
        f"threads {args.threads} · seed {seed} · {sampler.describe()} · {model.layout} · device {model.device} "
        f"({model.device.reason})[/]",
        soft_wrap=True,
    )
    compile_s = warmup(model)
    result = None
    for event in generate(model, tokenizer, args.prompt, args.n_predict, sampler, make_rng(seed), args.stop, compile_s):
        if isinstance(event, GenerationResult):
            result = event
        else:
            console.out(event.text, end="", highlight=False)
    console.out("")
    t = result.timings
    err.print(
        f"[dim]{t.prompt_tokens} prompt tokens: prefill {t.prefill_tok_s:.1f} tok/s · {t.generated_tokens} generated: "
        f"decode {t.decode_tok_s:.1f} tok/s · time to first token {t.ttft_s * 1e3:.0f} ms · "
        f"compile {compile_s:.1f} s · finish {result.finish_reason}[/]",
        soft_wrap=True,
    )
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# crossval, bench, report: thin forwards to the harness packages (imported only when asked for, so the engine
# stays usable without them)


def _forwarding(name: str, help: str, module: str) -> Command:
    """A command that passes its arguments unchanged to `module.main(argv)`."""

    def add_arguments(p: argparse.ArgumentParser) -> None:
        # only for `bitnet-ref --help`: parse_args never lets this parser see a forwarding command's arguments
        p.add_argument("args", nargs=argparse.REMAINDER, help=f"arguments of {module} (see `bitnet-ref {name} --help`)")

    def run(args: argparse.Namespace, console: Console) -> int:
        return importlib.import_module(module).main(args.args)

    return Command(name, help, add_arguments, run, forward=True)


# ----------------------------------------------------------------------------------------------------------------------


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


COMMANDS: tuple[Command, ...] = (
    Command("synth", "write a synthetic BitNet b1.58 GGUF model", add_synth_arguments, run_synth),
    Command("inspect", "show a GGUF file's or HF checkpoint's architecture, config, tokenizer and tensors",
            add_inspect_arguments, run_inspect),
    Command("verify", "validate a GGUF model or HF checkpoint completely, decoding every tensor", add_verify_arguments,
            run_verify),
    Command("generate", "generate text with the bitnet_ref engine", add_generate_arguments, run_generate),
    Command("convert", "write an HF BitNet checkpoint as a faithful GGUF", add_convert_arguments, run_convert),
    _forwarding("crossval", "compare bitnet_ref with llama.cpp", "crossval.run"),
    _forwarding("bench", "time bitnet_ref and llama.cpp side by side", "bench.run"),
    _forwarding("report", "rebuild HTML reports from records", "reports.__main__"),
)


if __name__ == "__main__":
    sys.exit(main())
