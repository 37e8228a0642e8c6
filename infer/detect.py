"""Detect objects with a saved EfficientDet directory, using the preprocessing saved with it.

    detector = Detector.load("runs/shapes-tf_efficientdet_d0")    # or its export/
    result = detector.predict(["street.jpg", "photos/"], score_threshold=0.3)
    for p in result.predictions:
        for box in p.boxes:
            print(p.path, box.label, box.score, box.xyxy)          # original-image pixels

Each image is letterboxed to the model size (`flax_effnet.preprocessing.letterbox`, effdet's
`ResizePad`), run through the jitted model and `flax_effnet.detection.detect` (top-k, class-
aware NMS, 100 kept), and the boxes are scaled back to the image's own pixels. Batches are
padded to a power of two, as the classifier's predictor does.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from flax_effnet.detection import detect
from flax_effnet.images import ImageLoadError
from flax_effnet.preprocessing import letterbox
from flax_effnet.pretrained import Pretrained, load_pretrained_full, read_config
from flax_effnet.infer.predict import (
    InputError,
    _bucket,
    class_names_for,
    collect_image_paths,
    open_image,
    resolve_weights_dir,
)

DETECTOR_FAMILY = "efficientdet"


def is_detector_dir(path: str | os.PathLike) -> bool:
    """Whether `path` (a weights directory or a trainer workdir) holds a detector."""
    config = read_config(resolve_weights_dir(path))
    return config.get("model", {}).get("family") == DETECTOR_FAMILY


@dataclasses.dataclass(frozen=True)
class Box:
    """One detection: class, score and `(x1, y1, x2, y2)` in the image's pixels."""

    index: int
    label: str
    score: float
    xyxy: tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class ImageDetections:
    """An image's detections, best score first."""

    path: str
    width: int
    height: int
    boxes: tuple[Box, ...]


@dataclasses.dataclass(frozen=True)
class DetectResult:
    """Detections in input order, and the inputs that could not be read."""

    predictions: list[ImageDetections]
    errors: list[InputError]

    def to_dict(self) -> dict:
        """JSON-able form (what `predict_efficientnet --json` prints for a detector)."""
        return {
            "predictions": [
                {"path": p.path, "width": p.width, "height": p.height,
                 "boxes": [{"index": b.index, "label": b.label, "score": round(b.score, 6),
                            "xyxy": [round(v, 2) for v in b.xyxy]} for b in p.boxes]}
                for p in self.predictions
            ],
            "errors": [dataclasses.asdict(e) for e in self.errors],
        }


@functools.lru_cache(maxsize=8)
def _detect_fn(model, size: int):
    """Jitted model + `detect` for a model config at one input size (variables and images are
    arguments, so detectors of one architecture share the compilation)."""
    anchor_boxes = jnp.asarray(model.anchors.boxes((size, size)))

    @jax.jit
    def run(variables, images, scale):
        class_outputs, box_outputs = model.apply(variables, images)
        return detect(class_outputs, box_outputs, anchor_boxes, img_scale=1.0 / scale)

    return run


class Detector:
    """A loaded detector directory, ready to find boxes.

    Args:
      pretrained: what `load_pretrained_full` returned for an EfficientDet directory.
      batch_size: images per forward pass.
    """

    def __init__(self, pretrained: Pretrained, *, batch_size: int = 8):
        self.model = pretrained.model
        self.variables = jax.device_put(pretrained.variables)
        self.preprocessing = pretrained.preprocessing
        self.class_names = class_names_for(pretrained)
        self.batch_size = batch_size
        self._run = _detect_fn(self.model, self.preprocessing.input_size)

    @classmethod
    def load(cls, path: str | os.PathLike, *, batch_size: int = 8, **model_overrides) -> Detector:
        """Load a detector weights directory (or a trainer workdir holding `export/`).

        Raises:
          NotAPretrainedDirError: not a flax_effnet weights directory.
          ValueError: it holds a classifier, not a detector.
        """
        weights_dir = resolve_weights_dir(path)
        if not is_detector_dir(weights_dir):
            raise ValueError(f"{weights_dir} holds a classifier, not a detector")
        return cls(load_pretrained_full(weights_dir, **model_overrides), batch_size=batch_size)

    def detect_images(self, images: list[Image.Image], *, score_threshold: float = 0.0) -> list[list[Box]]:
        """Boxes (in each image's own pixels) of a list of decoded images."""
        out: list[list[Box]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            prepared = [letterbox(im, self.preprocessing) for im in chunk]
            rows = _bucket(len(chunk), self.batch_size)
            pixels = np.zeros((rows, *prepared[0][0].shape), np.float32)
            scale = np.ones((rows,), np.float32)
            for i, (x, s) in enumerate(prepared):
                pixels[i], scale[i] = x, s
            found = jax.device_get(self._run(self.variables, pixels, scale))
            for i, image in enumerate(chunk):
                keep = found.valid[i] & (found.scores[i] >= score_threshold)
                w, h = image.size
                out.append([
                    Box(int(c), self.class_names[int(c)], float(s),
                        tuple(float(v) for v in np.clip(b, 0, [w, h, w, h])))
                    for b, s, c in zip(found.boxes[i][keep], found.scores[i][keep], found.classes[i][keep])
                ])
        return out

    def predict(self, inputs: Iterable[str | os.PathLike], *, score_threshold: float = 0.3) -> DetectResult:
        """Boxes with score >= `score_threshold` for image files and folders of images."""
        paths, errors = collect_image_paths(inputs)
        predictions = []
        for start in range(0, len(paths), self.batch_size):
            loaded = []
            for p in paths[start:start + self.batch_size]:
                try:
                    loaded.append((p, open_image(p)))
                except ImageLoadError as e:
                    errors.append(InputError(p, str(e)))
            if not loaded:
                continue
            boxes = self.detect_images([im for _, im in loaded], score_threshold=score_threshold)
            for (p, im), found in zip(loaded, boxes):
                predictions.append(ImageDetections(p, im.size[0], im.size[1], tuple(found)))
        return DetectResult(predictions, errors)


def draw_detections(prediction: ImageDetections, out_path: str | os.PathLike) -> Path:
    """Write the image with its boxes, class names and scores drawn on it (PIL only)."""
    from PIL import ImageDraw

    image = open_image(prediction.path).copy()
    draw = ImageDraw.Draw(image)
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]
    width = max(1, round(max(image.size) / 200))
    for box in prediction.boxes:
        colour = palette[box.index % len(palette)]
        draw.rectangle(box.xyxy, outline=colour, width=width)
        text = f"{box.label} {box.score:.2f}"
        left, top, right, bottom = draw.textbbox((box.xyxy[0], box.xyxy[1]), text)
        lift = bottom - top + 2
        draw.rectangle((left, top - lift, right + 2, bottom - lift), fill=colour)
        draw.text((box.xyxy[0] + 1, box.xyxy[1] - lift), text, fill=(255, 255, 255))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


@dataclasses.dataclass(frozen=True)
class DetectionEvalResult:
    """COCO box statistics (`flax_effnet.detection.coco.STAT_NAMES`) of a detector on a data set."""

    data: str
    num_images: int
    metrics: dict[str, float]
    images_per_second: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate_detector(detector: Detector, source, *, name: str, limit: int | None = None) -> DetectionEvalResult:
    """COCO mAP (pycocotools) of `detector` on a detection source: records with `image`,
    `boxes` (xyxy pixels) and `classes`, e.g. the built-in `shapes_dataset.ShapesSource`.
    All detections count (no score threshold), as COCO scores them; `limit` takes that many
    records spread evenly over the source."""
    import time

    from flax_effnet.detection.coco import ImageBoxes, coco_metrics
    from flax_effnet.images import decode_image

    n = len(source)
    keys = range(n) if not limit or limit >= n else np.linspace(0, n - 1, limit).round().astype(int)
    truth, found, seconds = [], [], 0.0
    keys = list(keys)
    for start in range(0, len(keys), detector.batch_size):
        records = [source[int(k)] for k in keys[start:start + detector.batch_size]]
        images = [decode_image(r["image"]) for r in records]
        t0 = time.perf_counter()
        boxes = detector.detect_images(images, score_threshold=0.0)
        seconds += time.perf_counter() - t0
        for r, b in zip(records, boxes):
            truth.append(ImageBoxes(np.asarray(r["boxes"], np.float32).reshape(-1, 4), np.asarray(r["classes"])))
            found.append(ImageBoxes(np.array([x.xyxy for x in b], np.float32).reshape(-1, 4),
                                    np.array([x.index for x in b], np.int32), np.array([x.score for x in b])))
    metrics = coco_metrics(truth, found, len(detector.class_names))
    return DetectionEvalResult(name, len(truth), metrics, len(truth) / max(seconds, 1e-9))
