"""Run every benchmark and rewrite the results table in docs/benchmarks.md.

    python -m bench            # full runs (medians of at least 3)
    python -m bench --quick    # a short smoke run that CI uses to keep the benchmarks working
    python -m bench ingest     # only the benchmarks whose name contains "ingest"

Each benchmark is a module ``bench/bench_<name>.py`` with ``run(quick: bool) -> list[Result]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import re
import sys
import time
from pathlib import Path

import bench
from bench.common import Result, machine
from bench.compare import against_nodered

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("only", nargs="*", help="run benchmarks whose name contains one of these")
    parser.add_argument("--quick", action="store_true", help="short runs; the table is not rewritten")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    names = sorted(
        info.name for info in pkgutil.iter_modules(bench.__path__) if info.name.startswith("bench_")
    )
    names = [n for n in names if not args.only or any(o in n for o in args.only)]
    results: list[Result] = []
    for name in names:
        started = time.monotonic()
        print(f"== {name}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{name}")
        for result in module.run(quick=args.quick):
            results.append(result)
            print(f"   {_row(result)}", file=sys.stderr, flush=True)
        print(f"   ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    for result in against_nodered(results):
        results.append(result)
        print(f"   {_row(result)}", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    if not args.quick and not args.only:
        _rewrite_doc(results)
    failed = [r for r in results if r.met is False]
    if failed:
        print(f"{len(failed)} targets not met", file=sys.stderr)
    return 0


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _row(r: Result) -> str:
    ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "–"
    met = {True: "yes", False: "**no**", None: "–"}[r.met]
    baseline = f"{_fmt(r.baseline)} ({r.baseline_name})" if r.baseline_name else "–"
    return (
        f"| {r.benchmark} | {r.metric} | {_fmt(r.value)} {r.unit} | {baseline} | {ratio} "
        f"| {r.target or '–'} | {met} | {r.note} |"
    )


def _rewrite_doc(results: list[Result]) -> None:
    table = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.",
            "",
            "| benchmark | metric | median | baseline (median) | ratio | target | met | note |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *(_row(r) for r in results),
        ]
    )
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    text = re.sub(
        re.escape(BEGIN) + ".*?" + re.escape(END), f"{BEGIN}\n{table}\n{END}", text, flags=re.S
    )
    DOC.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
