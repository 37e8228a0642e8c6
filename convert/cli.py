"""`convert_torch_weights SRC [-o OUT]`: a PyTorch checkpoint -> a flax_effnet weights directory.

Thin: parses arguments, calls `convert_file` (and `verify`), prints what was detected or
assumed. Errors from the converter print as one message and exit 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flax_effnet.convert.errors import ConversionError
from flax_effnet.convert.formats import FORMATS, KNOWN_VARIANTS


def default_out(src: str) -> Path:
    """`b0.pth` -> `b0_flax` beside it."""
    p = Path(src)
    return p.with_name(p.name.split(".")[0] + "_flax")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_torch_weights",
        description="Convert a PyTorch checkpoint into a flax_effnet weights directory "
        "(config.json + variables.safetensors) for flax_effnet.load_pretrained. EfficientNet B0-B7 "
        "(torchvision, timm, timm tf_, efficientnet_pytorch, seed 000/004 code), MobileNetV2 "
        "(torchvision, timm, seed 002 code), MobileNetV1 (timm), ReXNet and ReXNet-lite (timm, "
        "clovaai = seed 003 code); format, family and architecture are detected from the keys.",
    )
    parser.add_argument("src", help=".pth/.pt/.bin (torch) or .safetensors checkpoint")
    parser.add_argument("-o", "--out", help="output directory (default: SRC's name + '_flax', beside it)")
    parser.add_argument("--format", choices=sorted(FORMATS), help="source format (default: detected from the keys)")
    arch = parser.add_mutually_exclusive_group()
    arch.add_argument("--variant", choices=KNOWN_VARIANTS, help="EfficientNet b0-b7 (default: detected from the shapes)")
    arch.add_argument(
        "--model",
        metavar="NAME",
        help="a registered model name of the checkpoint's family, e.g. mobilenetv2_100, rexnet_130 "
        "(flax_effnet.list_models()); default: detected from the shapes",
    )
    parser.add_argument(
        "--use-ema", action="store_true", help="convert the EMA weights of a checkpoint holding both (default: regular)"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        help="drop the checkpoint's classifier; attach a new N-way one for fine-tuning (0: backbone only)",
    )
    parser.add_argument(
        "--unsafe",
        action="store_true",
        help="allow whole pickled nn.Modules and TorchScript archives (runs code stored in the file)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is a weights directory (anything else is never replaced)",
    )
    parser.add_argument(
        "--verify", action="store_true", help="run the PyTorch reference (when importable) and the Flax model; print the max logit difference"
    )
    parser.add_argument("--verify-size", type=int, default=128, help="input size for --verify (default 128)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else default_out(args.src)
    # Imported here so `--help` is instant.
    from flax_effnet.convert.api import convert_file
    from flax_effnet.pretrained import check_replaceable, save_pretrained

    start = time.perf_counter()
    try:
        check_replaceable(out, args.overwrite)  # before any work: refuse what may not be replaced
        # With --verify nothing is written until the check has passed.
        model, variables, info = convert_file(
            args.src,
            None if args.verify else out,
            format=args.format,
            variant=args.variant or args.model,
            num_classes=args.num_classes,
            use_ema=args.use_ema,
            unsafe=args.unsafe,
            overwrite=args.overwrite,
        )
    except (ConversionError, FileExistsError) as e:
        print(f"convert_torch_weights: error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    name = f"EfficientNet-{info.variant.upper()}" if info.family == "efficientnet" else info.variant
    print(f"{args.src}: {info.format} {name} (family {info.family}, model {info.model_name or 'unregistered'}), "
          f"{info.num_tensors} tensors")
    for note in info.notes:
        print(f"  - {note}")
    print(
        f"  padding {info.padding}, BN eps {info.bn_epsilon:g}, Flax BN momentum {info.bn_momentum:g}, "
        f"num_classes {info.num_classes} (classifier {info.classifier})"
    )
    pp = info.preprocessing
    print(
        f"  preprocessing ({info.preprocessing_source}): input {pp.input_size}, crop_pct "
        f"{pp.crop_pct:.4g}, {pp.interpolation}, mean {pp.mean}, std {pp.std}"
    )
    if args.verify:
        status = _verify(args, model, variables, info)
        if status:
            print(f"nothing written to {out}", file=sys.stderr)
            return status
        save_pretrained(out, model, variables, info.preprocessing, source=info.source(), overwrite=args.overwrite)
        seconds = time.perf_counter() - start
    print(f"wrote {out} in {seconds:.1f}s  (flax_effnet.load_pretrained({str(out)!r}))")
    return 0


def _verify(args, model, variables, info) -> int:
    """0 when the logits agree (or no reference is importable), 1 on error, 2 on a mismatch."""
    from flax_effnet.convert.io import read_checkpoint
    from flax_effnet.convert.verify import verify

    try:
        ckpt = read_checkpoint(args.src, use_ema=args.use_ema, unsafe=args.unsafe)
        result = verify(ckpt.tensors, model, variables, info, input_size=args.verify_size)
    except ConversionError as e:
        print(f"convert_torch_weights: verify failed: {e}", file=sys.stderr)
        return 1
    if result is None:
        print(f"verify: no importable PyTorch implementation of format {info.format}; skipped")
        return 0
    print(result.report())
    if result.max_logit_diff is not None and (result.max_logit_diff > 1e-3 or not result.top1_agree):
        print("verify: MISMATCH", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
