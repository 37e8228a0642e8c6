"""`export_efficientnet`: argument parsing and printing only; the work is in
`flax_effnet.export.api.export_pretrained`.

    export_efficientnet WEIGHTS --to onnx|stablehlo -o OUT [--layout nchw|nhwc]
                        [--input-size N | --input-size H W] [--overwrite] [--verify-batch N]

WEIGHTS is a directory written by `convert_torch_weights` or a trainer workdir (its
`export/` is used). Exit status: 0 written and verified; 1 the exported file did not match
the Flax model (nothing written); 2 nothing could be done (bad weights directory, output
path, option or missing exporter package).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flax_effnet.pretrained import NotAPretrainedDirError


def _fail(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `export_efficientnet`."""
    parser = argparse.ArgumentParser(
        prog="export_efficientnet",
        description="Export a flax_effnet weights directory to ONNX or StableHLO (jax.export) "
        "for serving, in eval mode with a dynamic batch dimension, and check the written file "
        "against the Flax model on a random batch.",
    )
    parser.add_argument(
        "weights",
        help="weights directory (convert_torch_weights output, or a trainer workdir with export/)",
    )
    parser.add_argument("--to", required=True, choices=("onnx", "stablehlo"), help="format")
    parser.add_argument("-o", "--output", required=True, help="file to write (StableHLO: also OUT.json)")
    parser.add_argument(
        "--layout",
        choices=("nchw", "nhwc"),
        help="input layout (default: nchw for onnx, nhwc for stablehlo)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        metavar="N",
        help="N or H W (default: the saved preprocessing's input size)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--verify-batch", type=int, default=2, help="rows of the random verification batch (default 2)"
    )
    args = parser.parse_args(argv)
    size = args.input_size
    if size is not None and (len(size) not in (1, 2) or min(size) < 1):
        parser.error("--input-size takes one or two positive integers")
    if args.verify_batch < 1:
        parser.error("--verify-batch must be positive")

    from flax_effnet.export.api import export_pretrained
    from flax_effnet.export.errors import ExportError, VerificationError

    try:
        result = export_pretrained(
            args.weights,
            args.output,
            to=args.to,
            layout=args.layout,
            input_size=None if size is None else (size[0], size[-1]),
            overwrite=args.overwrite,
            verify_batch=args.verify_batch,
        )
    except VerificationError as e:
        return _fail(str(e), status=1)
    except (NotAPretrainedDirError, ExportError) as e:
        return _fail(str(e))
    h, w = result.input_size
    print(
        f"wrote {result.path} ({result.format}, {result.layout.upper()} input (batch, "
        f"{'3, ' if result.layout == 'nchw' else ''}{h}, {w}{'' if result.layout == 'nchw' else ', 3'}), "
        f"outputs {', '.join(result.outputs)}) in {result.export_seconds:.1f} s"
    )
    if result.metadata_path is not None:
        print(f"wrote {result.metadata_path} (preprocessing, class names, layout)")
    print(
        f"verify: max |diff| vs Flax {result.max_abs_diff:.3g} on a random batch of "
        f"{result.verify_batch} (tolerance {result.tolerance:.3g}) in {result.verify_seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
