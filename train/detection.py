"""The detection task of the trainer (`--task detection`, `train_efficientdet`): EfficientDet on
boxes, scored with COCO mAP.

`DetectionTask` plugs into `loop.train_and_evaluate` beside the classifier's task, so a
detector gets the same schedule, optimizer, EMA, orbax checkpoints with exact resume,
sharding and multi-host as a classifier. What it brings:

- data: the built-in `shapes-v1` set (`shapes_dataset`) or a COCO-format folder
  (`coco_source`), records with variable numbers of xyxy boxes;
- transforms: letterbox to the model size (`flax_effnet.preprocessing.letterbox`, effdet's
  `ResizePad`), horizontal flip with the boxes flipped for training, and fixed-size targets
  (`max_instances` rows of yxyx input-pixel boxes, class -1 padding) so every batch has one
  shape;
- the loss: anchors labelled inside the jitted step (`flax_effnet.detection.label_anchors`,
  vmapped over the batch), effdet's focal + Huber loss (`detection_loss`), normalised over the
  global batch's positives;
- eval: `detect` (top-k, class-aware NMS, 100 kept) in the jitted eval step, then COCO box
  mAP by pycocotools over the held-out split, in the original images' pixels.
"""

from __future__ import annotations

import functools
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from PIL import Image

from flax_effnet.detection import detect, detection_loss, label_anchors
from flax_effnet.detection.coco import ImageBoxes, coco_metrics
from flax_effnet.images import decode_image
from flax_effnet.preprocessing import Preprocessing, letterbox
from flax_effnet.pretrained import load_pretrained_full
from flax_effnet.registry import create_model, model_entry
from flax_effnet.specs import VARIANTS
from flax_effnet.train import coco_source, config as config_lib, loop, shapes_dataset, sharding, sources

# Ground-truth rows of an eval record: all of an image's boxes must count in COCO's recall.
EVAL_MAX_INSTANCES = 100
MAX_DETECTIONS = 100
# The class head's prediction conv: its shape follows the class count, so fine-tuning on
# other classes starts it afresh (the rest of a pretrained detector is kept strictly).
CLASS_HEAD = ("params", "class_net", "predict")


def pad_targets(boxes_xyxy: np.ndarray, classes: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """xyxy boxes [M, 4] -> ([rows, 4] yxyx float32, [rows] int32 with -1 padding), the first
    `rows` objects kept."""
    boxes = np.zeros((rows, 4), np.float32)
    labels = np.full((rows,), -1, np.int32)
    n = min(rows, len(classes))
    boxes[:n] = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)[:n][:, [1, 0, 3, 2]]
    labels[:n] = np.asarray(classes, np.int32)[:n]
    return boxes, labels


def hflip(image: Image.Image, boxes_xyxy: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Mirror an image and its xyxy boxes (pixel edges: x -> width - x, left and right swap)."""
    width = image.size[0]
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), boxes


def _record_boxes(element: dict) -> tuple[np.ndarray, np.ndarray]:
    """A decoded record's boxes and classes (none for an unreadable eval record)."""
    return (np.asarray(element.get("boxes", np.zeros((0, 4), np.float32)), np.float32).reshape(-1, 4),
            np.asarray(element.get("classes", np.zeros((0,), np.int32)), np.int32).reshape(-1))


class TrainTransform(grain.transforms.RandomMap):
    """Flip (with its boxes, half the time), letterbox, normalise, pad the targets:
    {'image', 'boxes' [M, 4] yxyx input px, 'classes' [M], 'scale', 'index', 'replaced'}."""

    def __init__(self, prep: Preprocessing, max_instances: int, flip: bool):
        self.prep, self.max_instances, self.flip = prep, max_instances, flip

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        image = decode_image(element["image"])
        boxes, classes = _record_boxes(element)
        if self.flip and rng.random() < 0.5:
            image, boxes = hflip(image, boxes)
        pixels, scale = letterbox(image, self.prep)
        boxes, classes = pad_targets(boxes * scale, classes, self.max_instances)
        return {"image": pixels, "boxes": boxes, "classes": classes, "scale": np.float32(scale),
                "index": np.int64(element["index"]), "replaced": np.int32(element["replaced"])}


class EvalTransform(grain.transforms.Map):
    """Letterbox and normalise; the targets padded to `EVAL_MAX_INSTANCES`; an unreadable record
    (`valid` False) becomes a blank image, masked out later."""

    def __init__(self, prep: Preprocessing):
        self.prep = prep

    def map(self, element: dict) -> dict:
        pixels, scale = letterbox(decode_image(element["image"]), self.prep)
        boxes, classes = _record_boxes(element)
        boxes, classes = pad_targets(boxes * scale, classes, EVAL_MAX_INSTANCES)
        return {"image": pixels, "boxes": boxes, "classes": classes, "scale": np.float32(scale),
                "index": np.int64(element["index"]), "valid": np.bool_(element["valid"])}

    def empty_batch(self) -> dict[str, np.ndarray]:
        size = self.prep.input_size
        return {"image": np.zeros((0, size, size, 3), np.float32),
                "boxes": np.zeros((0, EVAL_MAX_INSTANCES, 4), np.float32),
                "classes": np.zeros((0, EVAL_MAX_INSTANCES), np.int32),
                "scale": np.zeros((0,), np.float32), "index": np.zeros((0,), np.int64),
                "valid": np.zeros((0,), bool)}


def loss_fn(outputs, batch: dict[str, jax.Array], *, anchor_boxes: np.ndarray, num_classes: int):
    """effdet's training loss of one global batch: targets from the padded boxes, then focal
    + 50 x Huber; the class and box parts are reported too."""
    class_outputs, box_outputs = outputs
    anchors = jnp.asarray(anchor_boxes)
    cls_targets, box_targets, num_positives = jax.vmap(
        lambda b, c: label_anchors(anchors, b, c))(batch["boxes"], batch["classes"])
    total, class_loss, box_loss = detection_loss(
        class_outputs, box_outputs, cls_targets, box_targets, num_positives, num_classes=num_classes)
    return total, {"class_loss": class_loss, "box_loss": box_loss}


def eval_step(params, batch_stats, batch: dict[str, jax.Array], *, model: nn.Module,
              anchor_boxes: np.ndarray) -> dict[str, jax.Array]:
    """Detections of a batch (boxes xyxy in input pixels), with its ground truth and mask
    passed through: the loop replicates the outputs, so every process sees the global batch."""
    class_outputs, box_outputs = model.apply({"params": params, "batch_stats": batch_stats},
                                             batch["image"], train=False)
    found = detect(class_outputs, box_outputs, jnp.asarray(anchor_boxes), max_detections=MAX_DETECTIONS)
    return {"boxes": found.boxes, "scores": found.scores, "classes": found.classes,
            "valid": found.valid & batch["mask"][:, None],
            "gt_boxes": batch["boxes"], "gt_classes": batch["classes"], "scale": batch["scale"],
            "mask": batch["mask"]}


def image_boxes(out: dict[str, np.ndarray], row: int) -> tuple[ImageBoxes, ImageBoxes]:
    """(truth, detections) of one eval row, both xyxy in the original image's pixels."""
    scale = float(out["scale"][row])
    real = out["gt_classes"][row] >= 0
    truth = ImageBoxes(out["gt_boxes"][row][real][:, [1, 0, 3, 2]] / scale, out["gt_classes"][row][real])
    keep = out["valid"][row]
    found = ImageBoxes(out["boxes"][row][keep] / scale, out["classes"][row][keep], out["scores"][row][keep])
    return truth, found


class DetectionTask:
    """EfficientDet training on boxes: see the module docstring. The loop's task interface
    (`loop.ClassificationTask` documents it)."""

    name = "detection"
    train_metrics = ("class_loss", "box_loss")
    primary = "map"  # COCO AP@[.5:.95]
    default_data = shapes_dataset.NAME
    reinit_prefix = CLASS_HEAD

    def __init__(self, config: config_lib.Config):
        self.config = config

    def open_data(self) -> sources.DatasetSplits:
        """The built-in shapes, or the COCO-format folder `--data-dir` (`coco_source`)."""
        if not self.config.data_dir:
            return sources.DatasetSplits(
                train=shapes_dataset.ShapesSource("train"), val=shapes_dataset.ShapesSource("val"),
                class_names=shapes_dataset.CLASSES, description=shapes_dataset.DESCRIPTION)
        root = Path(self.config.data_dir).expanduser()
        train = coco_source.CocoFolderSource(root / "train")
        val = (coco_source.CocoFolderSource(root / "val", train.category_ids)
               if (root / "val" / coco_source.ANNOTATIONS).exists() else None)
        return sources.DatasetSplits(
            train=train, val=val, class_names=train.class_names,
            description=(f"COCO-format folder {root}: {len(train.class_names)} classes, {len(train)} train / "
                         f"{len(val) if val is not None else 0} val images"))

    def build_model(self, num_classes: int):
        """(model, preprocessing, pretrained variables or None, note), as `loop.build_model`:
        `--model` names the architecture, the fpn/head flags shrink it; `--pretrained` takes
        architecture and normalisation from a detector directory."""
        c = self.config
        fields = dict(num_classes=num_classes, dtype=loop.compute_dtype(c.compute_dtype),
                      bn_momentum=c.bn_momentum, backbone_bn_momentum=c.bn_momentum,
                      drop_path_rate=c.drop_path_rate)
        fields.update({k: getattr(c, k) for k in ("fpn_channels", "fpn_cell_repeats", "box_class_repeats")
                       if getattr(c, k)})
        if c.backbone:  # a paper variant by name, `tiny` as its spec (it is the trainer's own)
            fields["backbone"] = c.backbone if c.backbone in VARIANTS else config_lib.TRAIN_VARIANTS[c.backbone]
        if c.pretrained:
            loaded = load_pretrained_full(c.pretrained)
            p = loaded.preprocessing
            model = loaded.model.clone(**fields)
            prep = Preprocessing(c.image_size or p.input_size, 1.0, p.interpolation, p.mean, p.std)
            old = loaded.model.num_classes
            note = (f"fine-tuning from {c.pretrained} ({old} classes"
                    + (f"; class head re-initialised for {num_classes})" if old != num_classes else ")"))
            return model, prep, loaded.variables, note
        model = create_model(c.model, **fields)
        size = c.image_size or model_entry(c.model).preprocessing.input_size
        prep = Preprocessing(size, 1.0, c.interpolation, tuple(c.mean), tuple(c.std))
        return model, prep, None, "training from scratch"

    def describe(self, model: nn.Module) -> str:
        backbone = getattr(model.backbone, "name", model.backbone)
        return (f"EfficientDet {self.config.model or 'from ' + self.config.pretrained} (backbone {backbone}, "
                f"BiFPN {model.fpn_channels} wide x {model.fpn_cell_repeats} cells, heads "
                f"{model.box_class_repeats} repeats)")

    def train_transform(self, setup):
        return TrainTransform(setup.prep, self.config.max_instances, self.config.hflip)

    def eval_transform(self, prep: Preprocessing):
        return EvalTransform(prep)

    def batch_spec(self, n: int, image_size: int, *, train: bool, sharding) -> dict:
        rows = self.config.max_instances if train else EVAL_MAX_INSTANCES
        spec = {"image": ((n, image_size, image_size, 3), jnp.float32),
                "boxes": ((n, rows, 4), jnp.float32), "classes": ((n, rows), jnp.int32)}
        spec.update({"replaced": ((n,), jnp.int32)} if train else
                    {"scale": ((n,), jnp.float32), "mask": ((n,), jnp.bool_)})
        return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in spec.items()}

    def loss_fn(self, model: nn.Module, prep: Preprocessing, num_classes: int):
        return functools.partial(loss_fn, anchor_boxes=anchor_boxes(model, prep), num_classes=num_classes)

    def eval_step(self, model: nn.Module, prep: Preprocessing, num_classes: int):
        return functools.partial(eval_step, model=model, anchor_boxes=anchor_boxes(model, prep))

    def evaluate(self, eval_fn, params, batch_stats, eval_data, mesh, num_classes: int) -> dict[str, float]:
        """COCO box mAP over the whole eval set (pycocotools), figures as fractions."""
        truth, found = [], []
        for local in eval_data:
            batch = sharding.global_batch(
                {k: local[k] for k in ("image", "boxes", "classes", "scale", "mask")}, mesh)
            out = jax.device_get(eval_fn(params, batch_stats, batch))
            for row in np.flatnonzero(out["mask"]):
                t, f = image_boxes(out, row)
                truth.append(t)
                found.append(f)
        return {**coco_metrics(truth, found, num_classes), "count": float(len(truth))}

    def scalars(self, r: dict[str, float]) -> dict[str, float]:
        """The eval figures logged (and kept with the best step)."""
        return {"map": r["map"], "map50": r["map50"], "map75": r["map75"]}

    def best_entry(self, r: dict[str, float]) -> dict[str, float]:
        return {"map": r["map"], "map50": r["map50"]}

    def eval_message(self, group: str, r: dict[str, float]) -> str:
        return f"{group} mAP {r['map']:.4f} mAP@0.5 {r['map50']:.4f} mAP@0.75 {r['map75']:.4f}"


def anchor_boxes(model: nn.Module, prep: Preprocessing) -> np.ndarray:
    """The model's anchors [N, 4] yxyx at its input size (a constant of the jitted steps)."""
    return model.anchors.boxes((prep.input_size, prep.input_size))
