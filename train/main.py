"""Command line: `train_efficientnet [--preset P] [--data-dir DIR] [--workdir DIR] [--FIELD VALUE ...]`,
and `train_efficientdet [...]`, the same with `--task detection`.

Thin on purpose: parse the config, run `loop.train_and_evaluate`, print the summary.
Exit status 0 when finished, 143 (128 + SIGTERM) when stopped by SIGTERM after saving,
1 on a non-finite loss or too many unreadable images, 2 on a usage error.
"""

from __future__ import annotations

import sys

from flax_effnet.train import config as config_lib


def _print_summary(summary: dict) -> None:
    print("\n== summary ==")
    for group in ("eval", "ema"):
        best = summary["best"].get(group)
        if best and summary.get("task") == "detection":
            last = summary["last"].get(f"{group}/map")
            line = (f"{group:>4}: best COCO mAP {best['map']:.4f} (step {best['step']}), "
                    f"mAP@0.5 {best['map50']:.4f}")
            print(line + (f"; last mAP {last:.4f}, mAP@0.5 {summary['last'][f'{group}/map50']:.4f}"
                          if last is not None else ""))
        elif best:
            last = summary["last"].get(f"{group}/top1")
            line = f"{group:>4}: best top-1 {best['top1']:.2%} (step {best['step']}), top-5 {best['top5']:.2%}"
            print(line + (f"; last top-1 {last:.2%}" if last is not None else ""))
    print(f"steps {summary['steps']}/{summary['total_steps']} in {summary['wall_time_s']:.0f} s "
          f"(this invocation)")
    bad = summary["unreadable_images"]
    if bad["train"] or bad["val"]:
        print(f"unreadable images skipped: {len(bad['train'])} train (replaced in "
              f"{bad['replaced_examples']} examples by the next readable image), {len(bad['val'])} val "
              f"(left out of the accuracy); named in the warnings above and in summary.json")
    print(f"checkpoint: {summary['checkpoint']}")
    if summary.get("export"):
        print(f"exported ({summary['exported_weights']} weights): {summary['export']}")
    print(f"metrics: {summary['workdir']}/metrics.jsonl, TensorBoard: {summary['workdir']}/tb")


# Modules of the `train` extra: without them the trainer cannot start.
_TRAIN_EXTRA = ("optax", "orbax", "grain", "tensorflow_datasets", "tensorboardX", "array_record")


def main(argv: list[str] | None = None) -> int:
    config = config_lib.parse_args(argv)
    # Imported after parsing so that --help is instant.
    import jax

    from flax_effnet.host import keep_freed_memory, set_xla_cpu_flags

    set_xla_cpu_flags()  # before JAX's first computation; not where XLA_FLAGS is set

    try:
        from flax_effnet.train import distributed, loop
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _TRAIN_EXTRA:
            raise
        print(f"error: the trainer needs {e.name}, which is not installed: "
              "pip install 'flax-effnet[train]'", file=sys.stderr)
        return 2

    if config.keep_freed_memory:
        keep_freed_memory()  # before JAX's first computation starts its thread pools
    distributed.initialize(config)  # multi-host: before anything touches a device

    try:
        summary = loop.train_and_evaluate(config)
    except (loop.NonFiniteLossError, loop.UnreadableDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:  # multi-host: one summary, from process 0
        _print_summary(summary)
    return 143 if summary["preempted"] else 0


def detection_main(argv: list[str] | None = None) -> int:
    """`train_efficientdet`: the trainer with `--task detection` (by default the built-in
    `shapes` preset: a small EfficientDet on procedurally generated boxes)."""
    return main(["--task", "detection", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
