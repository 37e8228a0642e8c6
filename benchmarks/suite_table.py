"""Joins the `--json` files of benchmark runs into one JSON and one markdown table.

    python benchmarks/suite_table.py OUT_DIR TITLE [RUN.json ...]

Each RUN.json is what `bench_throughput.py --json` wrote; the run's name is the file's stem.
Writes OUT_DIR/suite.json (every row, with the run's arguments and load average) and
OUT_DIR/suite.md (one table row per contestant and mode: img/s, ours/this, compile s, memory),
and prints the markdown. A run that wrote no JSON (it failed or timed out) is listed as such.
"""

from __future__ import annotations

import json
import os
import sys

MEMORY_KEYS = ("jax_peak_mb", "torch_peak_mb", "xla_total_mb", "rss_growth_mb")


def load_runs(paths: list[str]) -> list[dict]:
    runs = []
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            with open(path) as f:
                runs.append(dict(name=name, **json.load(f)))
        except (OSError, ValueError) as e:
            runs.append(dict(name=name, error=f"{type(e).__name__}: {e}"))
    return runs


def markdown(title: str, runs: list[dict]) -> str:
    lines = [f"### {title}", "",
             "| run | mode | contestant | img/s | ours/this | compile s | memory MiB | load avg |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        if "error" in run:
            lines.append(f"| {run['name']} | - | no result ({run['error'][:80]}) | | | | | |")
            continue
        load = run.get("loadavg")
        load_s = f"{load[0]:.1f}" if load else "-"
        for row in run["rows"]:
            mem = ", ".join(f"{k.removesuffix('_mb')} {row[k]:.0f}" for k in MEMORY_KEYS if k in row)
            rounds = row.get("img_s_rounds")
            ips = f"{row['img_s']:.1f}" + (f" ({', '.join(f'{v:.1f}' for v in rounds)})" if rounds else "")
            comp = row.get("compile_s")
            comp_s = "-" if comp is None or comp != comp else f"{comp:.1f}"
            lines.append(f"| {run['name']} | {row['mode']} | {row['name']} | {ips} | "
                         f"{row['ratio_ours_over']:.2f} | {comp_s} | {mem or '-'} | {load_s} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    out_dir, title, paths = argv[0], argv[1], argv[2:]
    runs = load_runs(paths)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "suite.json"), "w") as f:
        json.dump(dict(title=title, runs=runs), f, indent=1)
    md = markdown(title, runs)
    with open(os.path.join(out_dir, "suite.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
