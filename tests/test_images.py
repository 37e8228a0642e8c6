"""The one image decoder (flax_effnet.images): orientation, every colour mode, damaged metadata,
arrays; and that the trainer, predict and evaluate see the same pixels and the same files."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flax_effnet.images import (
    BACKGROUND,
    ImageLoadError,
    array_to_image,
    class_folders,
    decode_image,
    image_files,
)
from flax_effnet.preprocessing import Preprocessing, eval_transform

ORIENTATION = 0x0112


def _asymmetric(width=24, height=16) -> np.ndarray:
    """An image whose every rotation and mirror differs: a gradient plus a marked corner."""
    y, x = np.mgrid[0:height, 0:width]
    a = np.stack([x * 10 % 256, y * 15 % 256, (x + 2 * y) * 5 % 256], -1).astype(np.uint8)
    a[:3, :3] = (255, 0, 0)
    return a


def _with_orientation(pixels: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize(
    "orientation, upright",
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # the phone held upright: stored turned left
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(orientation, upright):
    pixels = _asymmetric()
    got = np.asarray(decode_image(_with_orientation(pixels, orientation, "PNG")))
    np.testing.assert_array_equal(got, upright(pixels))


def _malformed_exif() -> bytes:
    """EXIF whose orientation tag has the IFD type (13): PIL's exif_transpose raises
    struct.error on it (found by fuzzing; predict used to die with a traceback)."""
    entries = [(ORIENTATION, 13, 1, struct.pack("<I", 6)), (0x0132, 1, 2, struct.pack("<I", 2**31)),
               (0xA005, 7, 2, struct.pack("<I", 8))]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", *e[:3]) + e[3] for e in entries)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def test_malformed_exif_keeps_the_stored_pixels():
    from PIL import ImageOps

    pixels = _asymmetric()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", exif=_malformed_exif())
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        with pytest.raises(Exception):  # the failure the decoder guards against
            ImageOps.exif_transpose(im)
    np.testing.assert_array_equal(np.asarray(decode_image(buf.getvalue())), pixels)


def _encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_palette_and_grayscale_become_rgb():
    pixels = _asymmetric()
    palette = Image.fromarray(pixels).quantize(64)
    np.testing.assert_array_equal(np.asarray(decode_image(_encode(palette))), np.asarray(palette.convert("RGB")))
    gray = np.arange(24 * 16, dtype=np.uint8).reshape(16, 24)
    got = np.asarray(decode_image(_encode(Image.fromarray(gray, "L"))))
    assert got.shape == (16, 24, 3)
    np.testing.assert_array_equal(got, np.repeat(gray[..., None], 3, -1))


def test_transparency_is_composited_over_white():
    assert BACKGROUND == (255, 255, 255)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (0, 0, 200)  # the colour stored under the alpha
    rgba[0, 0, 3] = 255  # opaque
    rgba[0, 1, 3] = 0  # fully transparent
    rgba[0, 2, 3] = 128  # half
    got = np.asarray(decode_image(_encode(Image.fromarray(rgba, "RGBA")))).astype(int)
    assert tuple(got[0, 0]) == (0, 0, 200)
    assert tuple(got[0, 1]) == (255, 255, 255)  # not the stored blue, not black
    assert np.all(np.abs(got[0, 2] - np.array([127, 127, 227])) <= 1)
    # Gray + alpha, and a palette with a transparent entry.
    la = Image.fromarray(np.stack([np.full((2, 2), 10, np.uint8), np.zeros((2, 2), np.uint8)], -1), "LA")
    assert np.all(np.asarray(decode_image(_encode(la))) == 255)
    p = Image.fromarray(np.zeros((2, 2), np.uint8), "P")
    p.putpalette([0, 0, 0] * 256)
    assert np.all(np.asarray(decode_image(_encode(p, transparency=0))) == 255)


def test_cmyk_jpeg_is_converted():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    got = np.asarray(decode_image(_encode(cmyk, "JPEG", quality=95))).astype(int)
    assert got.shape == (8, 8, 3)
    assert np.all(np.abs(got - np.array([255, 0, 0])) <= 8)


def _png16_rgb(pixels16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (PIL cannot write one)."""
    h, w, _ = pixels16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels16)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_16_bit_images_are_scaled_not_clipped():
    gray16 = np.array([[0, 257 * 64, 257 * 128, 65535]], np.uint16)
    got = np.asarray(decode_image(_encode(Image.fromarray(gray16))))
    assert Image.open(io.BytesIO(_encode(Image.fromarray(gray16)))).mode == "I;16"
    np.testing.assert_array_equal(got[0, :, 0], [0, 64, 128, 255])  # PIL's convert: 0, 255, 255, 255
    rgb16 = np.array([[[65535, 0, 257 * 100], [257 * 7, 65535, 0]]], np.uint16)
    np.testing.assert_array_equal(np.asarray(decode_image(_png16_rgb(rgb16))), [[[255, 0, 100], [7, 255, 0]]])


def test_float_images_are_taken_as_0_to_1(tmp_path):
    values = np.array([[0.0, 0.25, 0.5, 1.0, 1.5, -0.2]], np.float32)
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    got = np.asarray(decode_image(tmp_path / "f.tif"))
    np.testing.assert_array_equal(got[0, :, 1], [0, 64, 128, 255, 255, 0])  # PIL's convert: 0, 0, 0, 1, 1, 0


def test_arrays_like_tfds_records():
    gray = np.full((3, 5, 1), 77, np.uint8)
    np.testing.assert_array_equal(np.asarray(array_to_image(gray)), np.full((3, 5, 3), 77))
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert np.all(np.asarray(decode_image(rgba)) == 255)  # transparent -> background
    np.testing.assert_array_equal(np.asarray(decode_image(np.full((2, 2), 65535, np.uint16)))[..., 0], 255)
    with pytest.raises(ImageLoadError, match="shape"):
        decode_image(np.zeros((2, 2, 2), np.uint8))


@pytest.mark.parametrize("content, message", [
    (b"", "not an image file"), (b"GIF89a not really", "not an image file"),
])
def test_unreadable_inputs_raise_image_load_error(tmp_path, content, message):
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(ImageLoadError, match=message):
        decode_image(tmp_path / "x.jpg")
    with pytest.raises(ImageLoadError, match="no such file"):
        decode_image(tmp_path / "missing.jpg")
    truncated = _encode(Image.fromarray(_asymmetric(64, 64)), "JPEG")
    with pytest.raises(ImageLoadError, match="unreadable image"):
        decode_image(truncated[: len(truncated) // 2])


def test_trainer_predict_and_evaluate_see_the_same_tensor_for_a_rotated_photo(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6: every reader decodes it upright."""
    from flax_effnet.infer.evaluate import ImageFolderData
    from flax_effnet.infer.predict import open_image
    from flax_effnet.train import input_pipeline, sources

    folder = tmp_path / "data" / "train" / "cat"
    folder.mkdir(parents=True)
    (folder / "photo.jpg").write_bytes(_with_orientation(_asymmetric(40, 30), 6, "JPEG"))
    prep = Preprocessing(input_size=16, crop_pct=0.875)
    train = sources.open_image_folder(tmp_path / "data", val_fraction=0.0).train
    record = sources.DecodedSource(train, substitute=False)[0]
    assert record["image"].shape == (40, 30, 3)  # upright: taller than wide
    trainer_eval = input_pipeline.EvalTransform(prep).map(record)["image"]
    predicted = eval_transform(open_image(folder / "photo.jpg"), prep)
    np.testing.assert_array_equal(trainer_eval, predicted)

    class _Predictor:  # what ImageFolderData asks of a predictor
        class_names, num_classes = ("cat",), 1

    evaluated = ImageFolderData(tmp_path / "data" / "train", _Predictor()).load(0)[0]
    np.testing.assert_array_equal(eval_transform(evaluated, prep), predicted)


def test_folder_listing_skips_hidden_entries_and_recurses(tmp_path):
    root = tmp_path / "root"
    for rel in ["cat/a.jpg", "cat/sub/b.png", "cat/.hidden.jpg", "cat/.ipynb_checkpoints/a-checkpoint.jpg",
                "dog/c.JPEG", "dog/notes.txt", ".ipynb_checkpoints/x.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    assert class_folders(root) == ["cat", "dog"]
    assert [p.relative_to(root).as_posix() for p in image_files(root / "cat")] == ["cat/a.jpg", "cat/sub/b.png"]
    assert [p.name for p in image_files(root / "dog")] == ["c.JPEG"]


def test_trainer_and_evaluate_take_the_same_files(tmp_path):
    """A folder the trainer accepts, with a notebook's `.ipynb_checkpoints` in it, is accepted
    by evaluate too, with the same images in the same classes."""
    from flax_effnet.infer.evaluate import ImageFolderData
    from flax_effnet.train import sources

    root = tmp_path / "flowers"
    for cls in ("daisy", "rose"):
        for i in range(3):
            path = root / "val" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_asymmetric()).save(path)
        shutil.copytree(root / "val" / cls, root / "train" / cls)
        shutil.copytree(root / "val" / cls, root / "val" / cls / ".ipynb_checkpoints")
    shutil.copytree(root / "val", root / "val" / ".ipynb_checkpoints")
    shutil.copytree(root / "val", root / ".ipynb_checkpoints")

    trainer_val = sources.open_image_folder(root).val

    class _Predictor:
        class_names, num_classes = ("daisy", "rose"), 2

    evaluated = ImageFolderData(root, _Predictor())
    assert [(Path(p).relative_to(root).as_posix(), label) for p, label in evaluated.items] == [
        (Path(trainer_val.describe(i)).relative_to(root).as_posix(), int(trainer_val.labels[i]))
        for i in range(len(trainer_val))
    ]
    assert len(evaluated) == 6
