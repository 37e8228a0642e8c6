"""`predict_efficientnet` and `evaluate_efficientnet`: argument parsing and printing only;
the work is in `flax_effnet.infer.predict` and `flax_effnet.infer.evaluate`.

    predict_efficientnet WEIGHTS IMAGE_OR_FOLDER... [--top-k 5] [--json] [--save-plot DIR]
    evaluate_efficientnet WEIGHTS (FOLDER | tfds:NAME[:SPLIT] --data-dir DIR) [--limit N]
    evaluate_efficientnet DETECTOR_WEIGHTS (shapes | COCO_FOLDER) [--limit N]

WEIGHTS is a directory written by `convert_torch_weights` or a trainer workdir (its
`export/` is used). For a detector (EfficientDet) directory, predict prints each image's
boxes, scores and classes (`--score-threshold`) and `--save-plot` draws them on the image;
evaluate scores COCO mAP on the built-in `shapes` validation split or on a COCO-format folder
(`instances.json` beside the images). Exit status: 0 all good; 1 some inputs were skipped (each reported on
stderr by name); 2 nothing could be done (bad weights directory, no readable input).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from flax_effnet.pretrained import NotAPretrainedDirError


def _weights_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "weights",
        help="weights directory (convert_torch_weights output, or a trainer workdir with export/)",
    )


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _report_errors(errors) -> None:
    for e in errors:
        print(f"skipped {e.path}: {e.message}", file=sys.stderr)


def format_table(result) -> str:
    """Predictions as a plain-text table: one row per (image, rank)."""
    rows = [("image", "rank", "prob", "class")]
    for p in result.predictions:
        for rank, c in enumerate(p.classes, 1):
            rows.append(
                (
                    p.path if rank == 1 else "",
                    str(rank),
                    f"{c.probability:.2%}",
                    f"{c.label} ({c.index})",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for r in rows:
        lines.append(
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()
        )
    return "\n".join(lines)


def predict_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `predict_efficientnet`."""
    parser = argparse.ArgumentParser(
        prog="predict_efficientnet",
        description="Top-k classes of images with a flax_effnet checkpoint, using the "
        "checkpoint's own preprocessing and class names.",
    )
    _weights_arg(parser)
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE",
        help="image files and/or folders (searched recursively)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--save-plot",
        metavar="DIR",
        help="write DIR/NNNN_<name>.png: each image beside its top-k bar chart (a detector: "
        "the image with its boxes drawn)",
    )
    parser.add_argument("--score-threshold", type=float, default=0.3,
                        help="detectors: boxes with at least this score (default 0.3)")
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be positive")
    if not 0.0 <= args.score_threshold <= 1.0:
        parser.error("--score-threshold must be in [0, 1]")

    from flax_effnet.host import set_xla_cpu_flags

    set_xla_cpu_flags()  # before JAX's first computation; not where XLA_FLAGS is set
    from flax_effnet.infer.detect import is_detector_dir
    from flax_effnet.infer.predict import Predictor

    try:
        if is_detector_dir(args.weights):
            return _predict_boxes(args)
    except ValueError as e:  # NotAPretrainedDirError: not ours, damaged
        return _fail(str(e))

    try:
        predictor = Predictor.load(args.weights, batch_size=args.batch_size)
    except ValueError as e:  # NotAPretrainedDirError (damaged, not ours), or no classifier
        return _fail(str(e))
    result = predictor.predict(args.inputs, top_k=args.top_k)
    _report_errors(result.errors)

    if args.save_plot and result.predictions:
        from flax_effnet.infer.plot import plot_filename, save_prediction_plot

        try:
            for i, p in enumerate(result.predictions):
                out = save_prediction_plot(p, f"{args.save_plot}/{plot_filename(p.path, i)}")
                print(f"wrote {out}", file=sys.stderr)
        except ImportError as e:
            return _fail(str(e))

    if args.json:
        out = {"weights": str(args.weights), **result.to_dict()}
        print(json.dumps(out, indent=2))
    elif result.predictions:
        print(format_table(result))
    if not result.predictions:
        print("error: no image could be read", file=sys.stderr)
        return 2
    return 1 if result.errors else 0


def format_boxes(result) -> str:
    """Detections as a plain-text table: one row per (image, box)."""
    rows = [("image", "score", "class", "box (x1, y1, x2, y2)")]
    for p in result.predictions:
        if not p.boxes:
            rows.append((p.path, "", "(none)", ""))
        for i, b in enumerate(p.boxes):
            rows.append((p.path if i == 0 else "", f"{b.score:.3f}", f"{b.label} ({b.index})",
                         ", ".join(f"{v:.1f}" for v in b.xyxy)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip()
                     for r in rows)


def _predict_boxes(args) -> int:
    """predict_efficientnet on a detector directory."""
    from flax_effnet.infer.detect import Detector, draw_detections
    from flax_effnet.infer.plot import plot_filename

    try:
        detector = Detector.load(args.weights, batch_size=args.batch_size)
    except ValueError as e:
        return _fail(str(e))
    result = detector.predict(args.inputs, score_threshold=args.score_threshold)
    _report_errors(result.errors)
    if args.save_plot:
        for i, p in enumerate(result.predictions):
            out = draw_detections(p, f"{args.save_plot}/{plot_filename(p.path, i)}")
            print(f"wrote {out}", file=sys.stderr)
    if args.json:
        print(json.dumps({"weights": str(args.weights), **result.to_dict()}, indent=2))
    elif result.predictions:
        print(format_boxes(result))
    if not result.predictions:
        print("error: no image could be read", file=sys.stderr)
        return 2
    return 1 if result.errors else 0


def _evaluate_boxes(args) -> int:
    """evaluate_efficientnet on a detector directory: COCO mAP on the built-in shapes."""
    from pathlib import Path

    from flax_effnet.infer.detect import Detector, evaluate_detector
    from flax_effnet.train.coco_source import ANNOTATIONS, CocoFolderSource
    from flax_effnet.train.shapes_dataset import NAME, ShapesSource

    if args.data in ("shapes", NAME):
        source, name = ShapesSource("val"), f"{NAME} val"
    elif (Path(args.data) / ANNOTATIONS).is_file():
        source, name = CocoFolderSource(args.data), args.data
    else:
        return _fail(f"a detector is evaluated on the built-in data (DATA = shapes) or a COCO-format "
                     f"folder holding {ANNOTATIONS}; got {args.data!r}")
    detector = Detector.load(args.weights, batch_size=args.batch_size)
    if len(source.class_names) != len(detector.class_names):
        return _fail(f"{args.data} has {len(source.class_names)} categories, the detector {len(detector.class_names)}")
    result = evaluate_detector(detector, source, name=name, limit=args.limit)
    if args.json:
        print(json.dumps({"weights": str(args.weights), **result.to_dict()}, indent=2))
    else:
        m = result.metrics
        print(f"{result.data}: {result.num_images} images  COCO mAP {m['map']:.4f}  mAP@0.5 "
              f"{m['map50']:.4f}  mAP@0.75 {m['map75']:.4f}  {result.images_per_second:.1f} images/s")
    return 0


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `evaluate_efficientnet`."""
    parser = argparse.ArgumentParser(
        prog="evaluate_efficientnet",
        description="Top-1/top-5 accuracy and images/s of a flax_effnet checkpoint on an "
        "image folder (root/<class>/*.jpg) or a prepared TFDS split.",
    )
    _weights_arg(parser)
    parser.add_argument("data", help="image folder root/<class>/..., or tfds:NAME[:SPLIT]")
    parser.add_argument("--data-dir", help="TFDS data_dir holding the prepared dataset")
    parser.add_argument("--split", help="TFDS split (default: the one in DATA, else validation)")
    parser.add_argument("--image-key", default="image", help="TFDS image feature (default image)")
    parser.add_argument("--label-key", default="label", help="TFDS label feature (default label)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--limit", type=int, help="evaluate N images spread evenly over the data")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size and --limit must be positive")

    from flax_effnet.host import keep_freed_memory, set_xla_cpu_flags

    set_xla_cpu_flags()  # before JAX's first computation; not where XLA_FLAGS is set
    from flax_effnet.infer.detect import is_detector_dir
    from flax_effnet.infer.evaluate import evaluate, open_eval_data
    from flax_effnet.infer.predict import Predictor

    keep_freed_memory()  # one forward buffer per batch, reused instead of re-faulted
    try:
        if is_detector_dir(args.weights):
            return _evaluate_boxes(args)
        predictor = Predictor.load(args.weights, batch_size=args.batch_size)
        data = open_eval_data(
            args.data,
            predictor,
            data_dir=args.data_dir,
            split=args.split,
            image_key=args.image_key,
            label_key=args.label_key,
        )
        result = evaluate(predictor, data, limit=args.limit, progress=not args.no_progress)
    except (NotAPretrainedDirError, FileNotFoundError, KeyError, ValueError, ImportError) as e:
        return _fail(str(e).strip("'\""))
    _report_errors(result.errors)
    if args.json:
        print(json.dumps({"weights": str(args.weights), **result.to_dict()}, indent=2))
    else:
        print(
            f"{result.data}: {result.num_images} images  top-1 {result.top1:.4f}  "
            f"top-5 {result.top5:.4f}  {result.images_per_second:.1f} images/s"
            + (f"  ({len(result.errors)} skipped)" if result.errors else "")
        )
    return 1 if result.errors else 0


if __name__ == "__main__":  # python -m flax_effnet.infer.cli predict|evaluate ...
    commands = {"predict": predict_main, "evaluate": evaluate_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m flax_effnet.infer.cli {{{','.join(commands)}}} ...")
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
