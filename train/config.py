"""Typed trainer config: one frozen dataclass, per-variant presets, command-line overrides.

Every field of `Config` is a command-line flag (`--batch-size 128`, `--ema-decay 0`,
`--no-hflip`). Values are resolved in this order: dataclass defaults, then the preset
(`--preset b3`: resolution, dropout and crop_pct of EfficientNet-B3), then the flags given.
The resolved config is written to `WORKDIR/config.json`.

Durations are given in epochs (or `num_steps`) and converted to steps once, in the loop
(big_vision's habit), so everything below the config deals only in steps.

Presets:
  patterns  The built-in default run: the procedurally generated `patterns-v2` dataset (no
            download), EfficientNet `tiny` (width 0.25, depth 0.25: 7 blocks, 0.13 M params)
            at 64 px, SGD + nesterov, 30 epochs (660 steps of 64). `bash scripts/train.sh`
            runs it; measured wall time and held-out top-1 are in the README (at least 97 % over seeds 0-4).
  b0..b7    The paper's resolution, dropout and crop_pct (TF: size / (size + 32)) for that
            variant, with the TF recipe's RMSProp, warmup + cosine and EMA.
  plain     The Config defaults (RMSProp recipe); resolution, crop_pct and dropout from
            `--model`. The default preset for `--model` on a dataset.
  shapes    The built-in detection run (`--task detection`, `train_efficientdet`): the
            procedurally generated `shapes-v1` boxes (no download), a small EfficientDet
            (tf_efficientdet_d0's structure on the `tiny` backbone, BiFPN width 32, 2 cells,
            2 head repeats) at 128 px from scratch; measured wall time and COCO mAP are in the
            README.
  seed002   Seed document 002's transfer learning, for `--pretrained DIR` (any family, e.g. a
            converted torchvision mobilenet_v2): features frozen, a new head for the data's
            classes, Adam at 1e-4 (batch 16), constant, 5 epochs, 224 px, plain cross-entropy,
            no EMA; RandomResizedCrop + flip as the seed's train.py.

`--model NAME` trains any registered model (`flax_effnet.list_models()`: mobilenetv2_100,
rexnet_100, efficientnet_b0, ...) instead of an EfficientNet `--variant`; the name fixes the
architecture (padding, BN epsilon) and the default resolution and crop_pct (timm's cfg).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import types
import typing
from pathlib import Path

from flax_effnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from flax_effnet.registry import list_models, model_entry
from flax_effnet.specs import VARIANTS, VariantSpec

# A small variant for the default run and the tests: B0's stages at a quarter of the width
# and depth (every stage one block), 125k params with 6 classes. Not one of the paper's.
TINY = VariantSpec("tiny", 0.25, 0.25, 64, 0.1)
TRAIN_VARIANTS: dict[str, VariantSpec] = {**VARIANTS, "tiny": TINY}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a training run depends on. Field comments are the `--help` text."""

    task: str = "classification"  # classification, or detection (EfficientDet: boxes, COCO mAP)
    # Data.
    data_dir: str = ""  # image folder (root/train/<class>, root/val/<class>, or root/<class>); "" = built-in patterns (detection: a COCO-format folder, root/{train,val}/instances.json; "" = built-in shapes)
    val_fraction: float = 0.2  # held-out share per class when data_dir has no train/ and val/
    max_unreadable_fraction: float = 0.01  # stop when more training images than this cannot be read (they are skipped)
    workdir: str = ""  # checkpoints, metrics, config, export; a rerun resumes. "" = runs/<data>-<model, pretrained dir or variant>
    num_workers: int = 2  # grain decoding worker processes (0 = decode in the main process)
    dataset: str = ""  # "" = the image folder data_dir; tfds:NAME = a TFDS dataset prepared (ArrayRecord) in data_dir
    train_split: str = "train"  # tfds only: any split expression, e.g. train[:45000] (percent slices work too)
    eval_split: str = ""  # tfds only: "" = validation, else test, if present; none = no eval
    # Multi-host (see train/distributed.py): jax.distributed.initialize before anything else.
    distributed: str = "auto"  # auto (when a coordinator or a TPU pod/SLURM/Open MPI job is found), on, off
    coordinator_address: str = ""  # host:port of process 0; "" = $JAX_COORDINATOR_ADDRESS or the cluster's
    num_processes: int = 0  # 0 = $JAX_NUM_PROCESSES or the cluster's
    process_id: int = -1  # < 0 = $JAX_PROCESS_ID or the cluster's
    # Model.
    model: str = ""  # a registered model (mobilenetv2_100, rexnet_100, efficientnet_b0, ...); "" = EfficientNet --variant
    variant: str = "b0"  # b0..b7, b8, l2, or tiny (width 0.25, depth 0.25)
    image_size: int = 0  # training and eval resolution; 0 = the variant's (the model's cfg)
    dropout_rate: float = -1.0  # head dropout; < 0 = the variant's (the model's)
    drop_path_rate: float = 0.2  # stochastic depth at the last block (models without shortcuts have none)
    padding: str = "same"  # same (TF) or symmetric (PyTorch); --variant only, a --model fixes it
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3  # --variant only, a --model fixes it
    compute_dtype: str = "auto"  # auto (bfloat16 on GPU/TPU, float32 on CPU), float32, bfloat16
    # Detection (--task detection) only.
    backbone: str = ""  # EfficientNet variant of the detector's backbone (b0..b7, tiny); "" = the model's
    fpn_channels: int = 0  # BiFPN width; 0 = the model's
    fpn_cell_repeats: int = 0  # BiFPN cells; 0 = the model's
    box_class_repeats: int = 0  # conv repeats of the class and box heads; 0 = the model's
    max_instances: int = 16  # boxes per training image (more are dropped; fewer padded)
    # Fine-tuning.
    pretrained: str = ""  # weights directory from convert_torch_weights or a previous export
    freeze_backbone: bool = False  # train only the classifier (the seed's --freeze-layers)
    # Preprocessing (eval: resize to size/crop_pct, centre crop; train: random resized crop).
    crop_pct: float = 0.0  # 0 = size / (size + 32), TF's eval crop (with --model: its cfg's)
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_area_min: float = 0.08  # Inception crop: area fraction range ...
    crop_area_max: float = 1.0
    crop_aspect_min: float = 3.0 / 4.0  # ... and aspect-ratio range
    crop_aspect_max: float = 4.0 / 3.0
    hflip: bool = True
    # Schedule.
    batch_size: int = 256  # global batch over all devices and hosts
    num_epochs: float = 350.0
    num_steps: int = 0  # > 0 overrides num_epochs
    warmup_epochs: float = 5.0
    # Optimizer.
    optimizer: str = "rmsprop"  # rmsprop (TF EfficientNet), sgd, adamw
    learning_rate: float = 0.016  # peak LR for a global batch of 256; scaled by batch / 256
    end_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak LR
    momentum: float = 0.9  # sgd and rmsprop momentum; adamw b1
    nesterov: bool = True  # sgd only
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1e-3  # added inside the sqrt, as TF does
    adam_b2: float = 0.999
    weight_decay: float = 1e-5  # L2 on conv/dense kernels only (never BN or biases); adamw: decoupled
    label_smoothing: float = 0.1
    grad_clip_norm: float = 0.0  # > 0 clips the global gradient norm
    ema_decay: float = 0.9999  # TF form min(decay, (1+t)/(10+t)); 0 disables EMA
    # Bookkeeping.
    seed: int = 0
    log_every_steps: int = 10
    eval_every_steps: int = 0  # 0 = once per epoch
    eval_batch_size: int = 0  # 0 = batch_size
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    progress_bar: bool = True
    # glibc malloc keeps freed memory (flax_effnet.host): saves re-faulting each step's buffers.
    keep_freed_memory: bool = True


def _variant_preset(name: str) -> dict:
    v = TRAIN_VARIANTS[name]
    return dict(variant=name, image_size=v.resolution, dropout_rate=v.dropout, crop_pct=0.0)


PRESETS: dict[str, dict] = {
    **{name: _variant_preset(name) for name in VARIANTS},
    "patterns": dict(
        variant="tiny",
        image_size=64,
        dropout_rate=0.1,
        drop_path_rate=0.0,
        bn_momentum=0.9,  # 660 steps: the TF 0.99 running averages would lag behind
        crop_pct=0.875,
        crop_area_min=0.4,  # an 8 % crop holds barely two periods, and zooms far past eval's scale
        batch_size=64,
        num_epochs=30.0,  # 20 ended at 94-99 % over seeds 0-4, 30 at 99.7-100 %
        warmup_epochs=1.0,
        optimizer="sgd",
        learning_rate=0.8,  # 0.2 peak at batch 64
        end_lr_ratio=0.01,
        weight_decay=5e-5,
        label_smoothing=0.1,
        ema_decay=0.99,
        eval_every_steps=165,  # every 7.5 epochs
        checkpoint_every_steps=165,
        log_every_steps=5,
    ),
    # The Config defaults: TF's RMSProp recipe; resolution, crop_pct and dropout the model's.
    "plain": dict(),
    "shapes": dict(
        task="detection",
        model="tf_efficientdet_d0",
        backbone="tiny",  # b0 took 2.5x as long a step on 2 CPU cores
        fpn_channels=32,
        fpn_cell_repeats=2,
        box_class_repeats=2,
        image_size=128,
        interpolation="bilinear",
        dropout_rate=0.0,
        drop_path_rate=0.0,
        bn_momentum=0.9,  # a few hundred steps: the 0.99 running averages would lag behind
        batch_size=16,
        num_steps=1000,  # 8 epochs of the 2,000 images
        warmup_epochs=0.4,
        optimizer="adamw",
        learning_rate=0.08,  # 5e-3 at batch 16; 1e-3 had reached half the loss drop by step 440
        end_lr_ratio=0.01,
        weight_decay=1e-4,
        grad_clip_norm=10.0,
        label_smoothing=0.0,
        ema_decay=0.99,
        eval_every_steps=500,
        checkpoint_every_steps=500,
        log_every_steps=20,
    ),
    # Seed 002 train.py: Adam(lr=1e-4) on batch 16 (the LR is per 256 images here, so 16x),
    # constant (end_lr_ratio 1, no warmup), CrossEntropyLoss, 5 epochs, features frozen.
    "seed002": dict(
        image_size=224,
        crop_pct=0.875,  # its val transform: Resize(256) + CenterCrop(224)
        interpolation="bilinear",
        dropout_rate=0.2,  # nn.Dropout(0.2) before its Linear
        drop_path_rate=0.0,  # torchvision's MobileNetV2 has no stochastic depth
        freeze_backbone=True,
        batch_size=16,
        num_epochs=5.0,
        warmup_epochs=0.0,
        optimizer="adamw",
        learning_rate=1e-4 * 256 / 16,
        end_lr_ratio=1.0,
        momentum=0.9,
        weight_decay=0.0,
        label_smoothing=0.0,
        ema_decay=0.0,
    ),
}


def default_preset(data_dir: str, model: str = "", task: str = "classification") -> str:
    """The built-in run without a dataset; on a user's image folder b0, or for `--model` the
    plain defaults (a variant preset would impose b0's resolution and dropout). A detection
    run starts from the `shapes` preset."""
    if task == "detection":
        return "shapes"
    if not data_dir:
        return "patterns"
    return "plain" if model else "b0"


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CHOICES = {
    "optimizer": ("rmsprop", "sgd", "adamw"),
    "padding": ("same", "symmetric"),
    "compute_dtype": ("auto", "float32", "bfloat16"),
    "distributed": ("auto", "on", "off"),
    "interpolation": ("nearest", "bilinear", "bicubic", "lanczos"),
    "task": ("classification", "detection"),
}


def config_problems(config: Config) -> list[str]:
    """Everything wrong with a config, one line each (flag names as on the command line);
    checked before any work, so a bad flag is a usage error and not a traceback minutes later."""
    c, problems = config, []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    for name in ("batch_size", "checkpoint_every_steps", "log_every_steps", "keep_checkpoints"):
        need(getattr(c, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
    for name in ("num_workers", "num_steps", "eval_every_steps", "eval_batch_size", "image_size",
                 "warmup_epochs", "weight_decay", "grad_clip_norm", "end_lr_ratio", "fpn_channels",
                 "fpn_cell_repeats", "box_class_repeats"):
        need(getattr(c, name) >= 0, f"--{name.replace('_', '-')} must not be negative, got {getattr(c, name)}")
    for name, choices in _CHOICES.items():
        need(getattr(c, name) in choices, f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, "
             f"got {getattr(c, name)!r}")
    need(c.num_steps > 0 or c.num_epochs > 0, f"--num-epochs must be positive, got {c.num_epochs}")
    need(c.learning_rate > 0, f"--learning-rate must be positive, got {c.learning_rate}")
    need(0 <= c.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {c.label_smoothing}")
    need(0 <= c.ema_decay < 1, f"--ema-decay must be in [0, 1) (0 turns EMA off), got {c.ema_decay}")
    need(0 <= c.crop_pct <= 1, f"--crop-pct must be in (0, 1] (0: size / (size + 32)), got {c.crop_pct}")
    need(0 < c.crop_area_min <= c.crop_area_max <= 1,
         f"--crop-area-min/max must satisfy 0 < min <= max <= 1, got {c.crop_area_min}, {c.crop_area_max}")
    need(0 < c.crop_aspect_min <= c.crop_aspect_max,
         f"--crop-aspect-min/max must satisfy 0 < min <= max, got {c.crop_aspect_min}, {c.crop_aspect_max}")
    need(0 <= c.val_fraction < 1, f"--val-fraction must be in [0, 1), got {c.val_fraction}")
    need(0 <= c.max_unreadable_fraction <= 1,
         f"--max-unreadable-fraction must be in [0, 1], got {c.max_unreadable_fraction}")
    need(len(c.mean) == 3 and len(c.std) == 3 and all(v > 0 for v in c.std),
         f"--mean and --std take three values (R,G,B), std positive; got {c.mean}, {c.std}")
    need(c.max_instances >= 1, f"--max-instances must be at least 1, got {c.max_instances}")
    need(c.variant in TRAIN_VARIANTS, f"--variant must be one of {', '.join(TRAIN_VARIANTS)}, got {c.variant!r}")
    need(not c.model or c.model in list_models(),
         f"--model must be a registered model (flax_effnet.list_models(): {', '.join(list_models())}), "
         f"got {c.model!r}")
    detector = bool(c.model) and c.model in list_models() and model_entry(c.model).family == "efficientdet"
    need(c.task != "detection" or c.pretrained or detector,
         f"--task detection trains an EfficientDet: --model must be one of "
         f"{', '.join(list_models('*efficientdet*'))} (or --pretrained a detector), got {c.model!r}")
    need(c.task == "detection" or not detector,
         f"--model {c.model} is a detector: train it with --task detection (train_efficientdet)")
    need(c.task == "detection" or not (c.backbone or c.fpn_channels or c.fpn_cell_repeats or c.box_class_repeats),
         "--backbone, --fpn-channels, --fpn-cell-repeats and --box-class-repeats apply to --task detection only")
    need(not c.backbone or c.backbone in TRAIN_VARIANTS,
         f"--backbone must be one of {', '.join(TRAIN_VARIANTS)}, got {c.backbone!r}")
    need(c.task != "detection" or (not c.image_size or c.image_size % 128 == 0),
         f"--image-size of a detector must be a multiple of 128 (2**max_level), got {c.image_size}")
    need(c.task != "detection" or not c.dataset,
         "--task detection reads the built-in shapes or a COCO-format --data-dir, not --dataset")
    need(not (c.model and c.pretrained),
         "--model and --pretrained both name the architecture; --pretrained takes it from its directory")
    need(not c.dataset or (c.dataset.startswith("tfds:") and len(c.dataset) > len("tfds:")),
         f"--dataset must be empty (an image folder given by --data-dir) or tfds:NAME, got {c.dataset!r}"
         + (f"; for a TFDS dataset write tfds:{c.dataset}" if c.dataset and ":" not in c.dataset else ""))
    need(not _URL.match(c.workdir),
         f"--workdir {c.workdir!r} is a URL; the trainer writes its workdir (config, metrics, "
         "TensorBoard, export) with local file operations: use a local path or a network file "
         "system every host mounts (NFS, Filestore), and copy it to object storage afterwards")
    return problems


def make_config(preset: str | None = None, **overrides) -> Config:
    """Defaults, then the preset, then `overrides` (the explicitly given flags).

    Raises:
      ValueError: an unknown preset or field, or values that cannot work (`config_problems`).
    """
    data = overrides.get("data_dir", "") or overrides.get("dataset", "")
    preset = preset or default_preset(data, overrides.get("model", ""), overrides.get("task", "classification"))
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ValueError(f"unknown config fields: {sorted(unknown)}")
    config = Config(**{**PRESETS[preset], **overrides})
    if not config.workdir:
        data_name = (Path(config.data_dir).resolve().name if config.data_dir
                     else "shapes" if config.task == "detection" else "patterns")
        if config.dataset.startswith("tfds:"):  # tfds:NAME[/CONFIG][:VERSION]
            data_name = config.dataset.split(":")[1].replace("/", "-") or "tfds"
        arch = config.model or (Path(config.pretrained).name if config.pretrained else config.variant)
        config = dataclasses.replace(config, workdir=f"runs/{data_name}-{arch}")
    problems = config_problems(config)
    fixed = sorted({"variant", "padding", "bn_epsilon"} & set(overrides))
    if config.model and fixed:
        problems.append(f"--model {config.model} fixes the architecture; "
                        f"{', '.join('--' + f.replace('_', '-') for f in fixed)} apply to EfficientNet --variant runs")
    if problems:
        raise ValueError("; ".join(problems))
    return config


def resolved_variant(config: Config) -> VariantSpec:
    """The VariantSpec of `config.variant`, with a clear error for unknown names."""
    if config.variant not in TRAIN_VARIANTS:
        raise ValueError(f"unknown variant {config.variant!r}; known: {', '.join(TRAIN_VARIANTS)}")
    return TRAIN_VARIANTS[config.variant]


def image_size(config: Config) -> int:
    """The config's, else the model's cfg (`--model`) or the variant's resolution."""
    if config.image_size:
        return config.image_size
    return model_entry(config.model).preprocessing.input_size if config.model else resolved_variant(config).resolution


def crop_pct(config: Config) -> float:
    """The config's, else the model's cfg (`--model`); for a variant TF EfficientNet's eval
    crop, which keeps size / (size + 32) of the shorter side."""
    if config.crop_pct:
        return config.crop_pct
    if config.model:
        return model_entry(config.model).preprocessing.crop_pct
    size = image_size(config)
    return size / (size + 32)


def _field_parser(tp) -> typing.Callable[[str], object]:
    if tp is bool:
        raise AssertionError("bools use BooleanOptionalAction")
    if typing.get_origin(tp) is tuple:
        (elem, *_) = typing.get_args(tp)
        return lambda s: tuple(elem(v) for v in s.split(","))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        raise TypeError(f"optional config fields are not supported: {tp}")
    return tp


def _field_comments() -> dict[str, str]:
    """The trailing comment of each field in Config's source: its --help text."""
    comments = {}
    for line in inspect.getsource(Config).splitlines():
        m = re.match(r"\s+(\w+): [^#]*#\s*(.*)$", line)
        if m:
            comments[m.group(1)] = m.group(2)
    return comments


def build_parser() -> argparse.ArgumentParser:
    """`--preset` plus one flag per Config field (defaults suppressed: only given flags count)."""
    parser = argparse.ArgumentParser(
        prog="train_efficientnet",
        description="Train or fine-tune EfficientNet, MobileNetV1/V2 or ReXNet (--model NAME). Without --data-dir: the built-in patterns run. "
        "Rerunning with the same --workdir resumes from its latest checkpoint.",
    )
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="patterns without --data-dir, else b0 (plain with --model)")
    hints = typing.get_type_hints(Config)
    defaults = Config()
    comments = _field_comments()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        help_text = f"{comments.get(f.name, '')} (base default {getattr(defaults, f.name)!r})".strip()
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=_field_parser(tp),
                                default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text)
    return parser


def parse_args(argv: list[str] | None = None) -> Config:
    """Command line -> resolved Config; invalid values exit with a usage error (status 2)."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    preset = ns.pop("preset")
    try:
        return make_config(preset, **ns)
    except ValueError as e:
        parser.error(str(e))


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as JSON (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_dict(config), indent=2) + "\n")
    os.replace(tmp, path)


def load_config(path: str | os.PathLike) -> Config:
    d = json.loads(Path(path).read_text())
    for name in ("mean", "std"):
        d[name] = tuple(d[name])
    return Config(**d)
