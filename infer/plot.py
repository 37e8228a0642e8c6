"""A PNG of an image beside a bar chart of its top-k classes (matplotlib: the `plot` extra)."""

from __future__ import annotations

import os
from pathlib import Path

from flax_effnet.infer.predict import Prediction, open_image


def plot_filename(image_path: str, index: int) -> str:
    """`<index>_<stem>.png`: the index keeps same-named images from different folders apart."""
    return f"{index:04d}_{Path(image_path).stem}.png"


def save_prediction_plot(prediction: Prediction, out_path: str | os.PathLike) -> Path:
    """Write the image (as decoded, before preprocessing) and its top-k probabilities.

    Raises:
      ImportError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never open a window
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--save-plot needs matplotlib: pip install 'flax-effnet[plot]'") from e

    image = open_image(prediction.path)
    labels = [c.label for c in prediction.classes]
    probs = [c.probability for c in prediction.classes]
    fig, (ax_img, ax_bar) = plt.subplots(
        1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1, 1.2]}
    )
    try:
        ax_img.imshow(image)
        ax_img.set_axis_off()
        top = prediction.classes[0]
        ax_img.set_title(f"{top.label}: {top.probability:.1%}", fontsize=11)
        y = list(range(len(labels)))[::-1]  # most probable on top
        ax_bar.barh(y, probs, color="tab:blue")
        ax_bar.set_yticks(y, labels)
        ax_bar.set_xlim(0, 1)
        ax_bar.set_xlabel("probability")
        for yi, p in zip(y, probs):
            inside = p > 0.8  # a long bar leaves no room to its right: label it inside, in white
            ax_bar.text(
                p - 0.01 if inside else p + 0.01,
                yi,
                f"{p:.1%}",
                va="center",
                fontsize=9,
                ha="right" if inside else "left",
                color="white" if inside else "black",
            )
        ax_bar.set_title(f"top-{len(labels)}", fontsize=11)
        fig.suptitle(Path(prediction.path).name, fontsize=9, color="dimgray")
        fig.tight_layout()
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
