"""Command line: `train_efficientnet [--preset P] [--data-dir DIR] [--workdir DIR] [--FIELD VALUE ...]`.

Thin on purpose: parse the config, run `loop.train_and_evaluate`, print the summary.
Exit status 0 when finished, 143 (128 + SIGTERM) when stopped by SIGTERM after saving,
1 on a non-finite loss.
"""

from __future__ import annotations

import sys

from flax_effnet.train import config as config_lib


def _print_summary(summary: dict) -> None:
    print("\n== summary ==")
    for group in ("eval", "ema"):
        best = summary["best"].get(group)
        if best:
            last = summary["last"].get(f"{group}/top1")
            line = f"{group:>4}: best top-1 {best['top1']:.2%} (step {best['step']}), top-5 {best['top5']:.2%}"
            print(line + (f"; last top-1 {last:.2%}" if last is not None else ""))
    print(f"steps {summary['steps']}/{summary['total_steps']} in {summary['wall_time_s']:.0f} s "
          f"(this invocation)")
    print(f"checkpoint: {summary['checkpoint']}")
    if summary.get("export"):
        print(f"exported ({summary['exported_weights']} weights): {summary['export']}")
    print(f"metrics: {summary['workdir']}/metrics.jsonl, TensorBoard: {summary['workdir']}/tb")


def main(argv: list[str] | None = None) -> int:
    config = config_lib.parse_args(argv)
    # Imported after parsing so that --help is instant.
    import jax

    from flax_effnet.host import keep_freed_memory
    from flax_effnet.train import distributed, loop

    if config.keep_freed_memory:
        keep_freed_memory()  # before JAX's first computation starts its thread pools
    distributed.initialize(config)  # multi-host: before anything touches a device

    try:
        summary = loop.train_and_evaluate(config)
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:  # multi-host: one summary, from process 0
        _print_summary(summary)
    return 143 if summary["preempted"] else 0


if __name__ == "__main__":
    sys.exit(main())
