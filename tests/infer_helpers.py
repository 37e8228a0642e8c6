"""Small checkpoints and image files for the predict/evaluate tests (not a test module)."""

from __future__ import annotations

import io
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from flax_effnet import EfficientNet, Preprocessing, VariantSpec, save_pretrained

# One block per stage, a quarter of b0's width: compiles in seconds on one CPU core.
TINY = VariantSpec("tiny", width=0.25, depth=0.34, resolution=32, dropout=0.0)
TINY_PREP = Preprocessing(input_size=32, crop_pct=0.875, interpolation="bilinear")


def random_variables(
    model: EfficientNet, size: int, seed: int = 0, logit_scale: float = 8.0
) -> dict:
    """He-normal kernels, random BN scale/bias/statistics, from shapes alone.

    `model.init` runs every layer eagerly (a minute on a busy CPU); `eval_shape` is free.
    The classifier is scaled by `logit_scale` so softmax outputs are far from uniform and
    top-k orders are not decided by float noise.
    """
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        names = [getattr(p, "key", str(p)) for p in path]
        shape, name = leaf.shape, names[-1]
        if name == "kernel":
            x = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
            if "classifier" in names:
                x *= logit_scale
        elif name == "var" or name == "scale":
            x = rng.uniform(0.5, 1.5, shape)
        else:  # BN bias and mean, dense biases
            x = rng.normal(0.0, 0.1, shape)
        return x.astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def save_tiny_checkpoint(
    directory: Path, class_names=("cat", "dog", "fish"), seed: int = 0
) -> Path:
    """A 3-class random-weight tiny EfficientNet saved with `save_pretrained`."""
    model = EfficientNet(TINY, num_classes=len(class_names))
    variables = random_variables(model, TINY_PREP.input_size, seed)
    return save_pretrained(
        directory,
        model,
        variables,
        TINY_PREP,
        class_names=list(class_names),
        source={"format": "test", "note": "random weights"},
    )


def random_image(width: int, height: int, seed: int) -> Image.Image:
    """Blocky random colours: enough content that different images get different logits."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST)


def write_images(folder: Path, count: int, seed: int = 0, ext: str = ".png") -> list[Path]:
    """`count` readable images of varied sizes named img0..; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i}{ext}"
        random_image(40 + 7 * i, 48 - 3 * i, seed * 1000 + i).save(path)
        paths.append(path)
    return paths


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in half: PIL opens its header but fails to decode the pixels."""
    buf = io.BytesIO()
    random_image(64, 64, 123).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path
