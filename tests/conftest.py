"""Shared test set-up. Kept minimal: nothing here imports torch unless a test asks for it."""

import pytest


def register_torchvision_ops():
    """Let torchvision (and timm, which imports it) import with this CPU torch build.

    torchvision's compiled ops do not load against torch 2.13 CPU; its Python side then fails
    registering fake kernels for ops that were never defined. Defining the two schemas first
    is enough for the model code. Idempotent.
    """
    import torch

    if getattr(register_torchvision_ops, "lib", None) is not None:
        return
    try:
        torch.ops.torchvision.nms  # defined already (a working torchvision, or an earlier call)
        register_torchvision_ops.lib = True
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    register_torchvision_ops.lib = lib  # the registration lives as long as this object


@pytest.fixture(scope="session")
def torchvision_ops():
    """Fixture form of `register_torchvision_ops` for tests that import torchvision or timm."""
    register_torchvision_ops()
