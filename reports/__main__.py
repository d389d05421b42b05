"""`python -m reports [OUT_DIR | RUN_DIR]`: rebuild HTML reports and out/index.html from records."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape

from reports.html import build_all
from reports.records import RecordError


def main(argv: list[str] | None = None) -> int:
    """Rebuild the report of one run folder, or every report and the index of an out/ folder."""
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    parser.add_argument("target", nargs="?", default="out", help="an out/ folder or one run folder (default: out)")
    args = parser.parse_args(argv)
    console = Console()
    try:
        written, failed = build_all(args.target)
    except RecordError as err:
        console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 1
    for path in written:
        console.print(f"[green]wrote[/] {path}")
    for run_dir, err in failed:
        console.print(f"[red]could not render[/] {run_dir}: {err}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
