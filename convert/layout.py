"""Tensor layout: PyTorch (NCHW, OIHW, Linear (out, in)) to Flax (NHWC, HWIO, Dense (in, out)).

Every function here is a pure numpy transpose/reshape; `torch_shape` functions give the inverse
mapping of shapes, so the key tables can state the PyTorch shape they expect for each Flax leaf.
"""

from __future__ import annotations

import numpy as np


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """Conv2d weight (O, I, kh, kw) -> Flax Conv kernel (kh, kw, I, O)."""
    return np.transpose(w, (2, 3, 1, 0))


def depthwise_kernel(w: np.ndarray) -> np.ndarray:
    """Depthwise Conv2d weight (C, 1, k, k) -> Flax grouped-conv kernel (k, k, 1, C).

    PyTorch's grouped layout puts the C groups on the output axis with one input channel each;
    Flax's `feature_group_count=C` kernel has the same (in=1, out=C), so it is the plain OIHW->HWIO.
    """
    return np.transpose(w, (2, 3, 1, 0))


def pointwise_to_dense(w: np.ndarray) -> np.ndarray:
    """A 1x1 Conv2d weight (O, I, 1, 1) acting on a pooled vector -> Dense kernel (I, O).

    Squeeze-excite in every source format is a pair of 1x1 convs; Flax writes it as Dense layers.
    """
    return np.transpose(w[:, :, 0, 0], (1, 0))


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """nn.Linear weight (O, I) -> Dense kernel (I, O)."""
    return np.transpose(w, (1, 0))


def identity(w: np.ndarray) -> np.ndarray:
    """BatchNorm vectors and biases keep their shape."""
    return w


# Flax leaf shape -> the PyTorch shape it comes from, per transform.
def torch_shape(transform, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch tensor shape that `transform` turns into `flax_shape`."""
    if transform in (conv_kernel, depthwise_kernel):
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if transform is pointwise_to_dense:
        i, o = flax_shape
        return (o, i, 1, 1)
    if transform is linear_kernel:
        i, o = flax_shape
        return (o, i)
    return tuple(flax_shape)
