"""Ranges over several runs of a benchmark suite: one markdown row per (run, mode, contestant)
with the lowest and highest images/s and ours/contestant ratio across the suites' JSON files
(`run_cpu_suite.sh` and `gpu_suite.sh` write them as OUT/suite.json).

    python benchmarks/suite_ranges.py suite1/suite.json suite2/suite.json [...]
"""

from __future__ import annotations

import json
import sys


def collect(paths: list[str]) -> dict[tuple[str, str, str], list[dict]]:
    """(run name, mode, contestant) -> its rows, one per suite that has it, in `paths` order."""
    rows: dict[tuple[str, str, str], list[dict]] = {}
    for path in paths:
        with open(path) as f:
            suite = json.load(f)
        for run in suite["runs"]:
            for row in run["rows"]:
                rows.setdefault((run["name"], row["mode"], row["name"]), []).append(row)
    return rows


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}-{hi:{fmt}}"


def table(rows: dict[tuple[str, str, str], list[dict]], runs: int) -> str:
    lines = [f"| run | mode | contestant | img/s ({runs} runs) | ours / it |", "| --- | --- | --- | --- | --- |"]
    for (name, mode, contestant), found in rows.items():
        rates = [r["img_s"] for r in found if r.get("img_s") is not None]
        ratios = [r["ratio_ours_over"] for r in found if r.get("ratio_ours_over") is not None]
        missing = "" if len(found) == runs else f" ({len(found)} of {runs})"
        lines.append(
            f"| {name} | {mode} | {contestant}{missing} | {_span(rates, '.1f') if rates else '-'} | "
            f"{_span(ratios, '.2f') if ratios else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(table(collect(paths), len(paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
