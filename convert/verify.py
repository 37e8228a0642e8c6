"""`--verify`: run the PyTorch reference and the converted Flax model on one input, compare.

For torchvision, timm and efficientnet_pytorch checkpoints the real PyTorch code is built
(when importable), loaded with the same tensors (`strict=True`), and run in eval mode on a
random normalised image; the Flax model gets the same image in NHWC. Reported: max |logit
difference|, whether top-1 agrees, and the max difference of each stage's output, so a
mismatch says where it starts. The seed formats have no importable package; their
equivalence is proven by the test suite's reference modules. timm's MobileNets and ReXNets
are built by name, so only widths timm registers can be verified. effdet detectors are built
by name with effdet's own config at the verify size (rounded up to a multiple of 2**max_level):
the class outputs of every level count as the logits (top-1: the best (anchor, class) of each
image), and each level's box outputs as the stages.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Mapping

import jax
import numpy as np

from flax import linen as nn

from flax_effnet.specs import scale_network

from flax_effnet.convert.api import ConversionInfo
from flax_effnet.convert.errors import ConversionError


@dataclasses.dataclass
class VerifyResult:
    """Differences between PyTorch and Flax outputs on the same input."""

    reference: str
    input_size: int
    max_logit_diff: float | None  # None when the classifier was replaced
    top1_agree: bool | None
    stage_diffs: list[float]

    def report(self) -> str:
        stages = ", ".join(f"{d:.2e}" for d in self.stage_diffs)
        if self.max_logit_diff is None:
            head = "logits not compared (classifier replaced)"
        else:
            head = f"max |logit diff| {self.max_logit_diff:.3e}, top-1 {'agrees' if self.top1_agree else 'DIFFERS'}"
        return f"verify vs {self.reference} at {self.input_size}x{self.input_size}: {head}; per-stage max diff [{stages}]"


def import_torchvision():
    """Import torchvision even where its compiled ops do not match the installed torch.

    torchvision registers fake kernels for `torchvision::nms` at import; when its C++ library
    fails to load (a CPU torch build newer than the wheel), that registration fails. Defining
    the two op schemas, then importing again, is enough for the model code.
    """
    import torch

    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_torchvision._lib = lib  # keep the registration alive
        import torchvision
    return torchvision


def last_block_indices(model: str | nn.Module) -> list[int]:
    """Global index of each stage's last block, of an EfficientNet variant or any model."""
    net = scale_network(model) if isinstance(model, str) else model.network
    last = {b.stage: i for i, b in enumerate(net.blocks)}
    return [last[s] for s in sorted(last)]


def reference_model(info: ConversionInfo, model: nn.Module, num_classes: int, image_size: int):
    """The real PyTorch model of a conversion, untrained, in eval mode; None if the package is
    not importable or cannot build this model (a timm width without a timm name).

    Returns:
      (module, [stage modules]) or None.
    """
    format, variant, name = info.format, info.variant, info.model_name
    try:
        if format == "torchvision_mobilenet_v2":
            tv = import_torchvision()
            m = tv.models.mobilenet_v2(width_mult=model.width, num_classes=num_classes)
            stages = [m.features[i + 1] for i in last_block_indices(model)]
        elif format in ("timm_mobilenetv2", "timm_mobilenetv1", "timm_rexnet"):
            if name is None:
                return None
            import_torchvision()  # timm imports torchvision
            import timm

            m = timm.create_model(name, num_classes=num_classes)
            stages = list(m.blocks) if format != "timm_rexnet" else [m.features[i] for i in last_block_indices(model)]
        elif format == "torchvision":
            tv = import_torchvision()
            m = getattr(tv.models, f"efficientnet_{variant}")(num_classes=num_classes)
            stages = [m.features[s + 1] for s in range(7)]
        elif format in ("timm", "timm_tf"):
            import_torchvision()  # timm imports torchvision
            import timm

            name = ("tf_" if format == "timm_tf" else "") + f"efficientnet_{variant}"
            m = timm.create_model(name, num_classes=num_classes)
            stages = list(m.blocks)
        elif format == "efficientnet_pytorch":
            from efficientnet_pytorch import EfficientNet as EP

            # SAME padding is frozen at build time: build it for the size it will be run at.
            m = EP.from_name(f"efficientnet-{variant}", num_classes=num_classes, image_size=image_size)
            stages = [m._blocks[i] for i in last_block_indices(variant)]
        else:
            return None
    except ImportError:
        return None
    return m.eval(), stages


@functools.lru_cache(maxsize=32)
def _jitted(model: nn.Module):
    """One jitted apply per model config (jit caches per input shape inside)."""
    last = {b.stage: f"blocks_{b.stage}_{b.index}" for b in model.network.blocks}
    wanted = set(last.values())

    def run(variables, x):
        out, state = model.apply(
            variables,
            x,
            capture_intermediates=lambda mdl, method: method == "__call__" and mdl.name in wanted,
            mutable=["intermediates"],
        )
        inter = state["intermediates"]
        return out, [inter[last[s]]["__call__"][0] for s in sorted(last)]

    return jax.jit(run)


def flax_logits_and_stages(model: nn.Module, variables: Mapping, x: np.ndarray):
    """Logits and the stage outputs (NHWC) of one jitted apply.

    The stage outputs are those of `model.apply(..., return_stages=True)` (each stage's last
    block), captured in the same pass as the logits so one compilation serves both.
    """
    out, stages = _jitted(model)(variables, x)
    return np.asarray(out), [np.asarray(s) for s in stages]


def torch_logits_and_stages(module, stage_modules, x_nchw: np.ndarray):
    """Logits and stage outputs (converted to NHWC) of a PyTorch model in eval mode."""
    import torch

    captured = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: captured.append(o.detach())) for m in stage_modules]
    try:
        with torch.no_grad():
            out = module(torch.from_numpy(x_nchw))
    finally:
        for h in hooks:
            h.remove()
    return out.numpy(), [c.permute(0, 2, 3, 1).numpy() for c in captured]


def verify(
    tensors: Mapping[str, np.ndarray],
    model: nn.Module,
    variables: Mapping,
    info: ConversionInfo,
    *,
    input_size: int = 128,
    seed: int = 0,
) -> VerifyResult | None:
    """Compare the converted model with the PyTorch reference built from the same tensors.

    Args:
      tensors: the torch state_dict as read (prefix included; `info.prefix` is stripped).
      model, variables, info: what `convert_state_dict` returned.
      input_size: square input size; even, so SAME and symmetric padding differ.
      seed: seed of the random input.

    Returns:
      A `VerifyResult`, or None when no PyTorch implementation of the format is importable.
    """
    import torch

    if info.family == "efficientdet":
        return _verify_detector(tensors, model, variables, info, input_size, seed)
    n_ref = info.num_classes if info.classifier == "converted" else 1000
    built = reference_model(info, model, n_ref, input_size)
    if built is None:
        return None
    module, stage_modules = built
    p = info.prefix
    state = {k[len(p):]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith(p)}
    if info.classifier != "converted":
        # The file's classifier was dropped: keep the reference's own, compare features only.
        own = module.state_dict()
        for k in list(state):
            if k not in own or own[k].shape != state[k].shape:
                state.pop(k)
        state.update({k: v for k, v in own.items() if k not in state})
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConversionError(f"--verify: the reference {info.format} model rejects the tensors: {e}") from None
    x = np.random.default_rng(seed).standard_normal((2, 3, input_size, input_size)).astype(np.float32)
    t_logits, t_stages = torch_logits_and_stages(module, stage_modules, x)
    f_logits, f_stages = flax_logits_and_stages(model, variables, x.transpose(0, 2, 3, 1))
    stage_diffs = [float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf") for a, b in zip(t_stages, f_stages)]
    if info.classifier == "converted":
        diff = float(np.max(np.abs(t_logits - f_logits)))
        agree = bool(np.all(t_logits.argmax(-1) == f_logits.argmax(-1)))
    else:
        diff, agree = None, None
    return VerifyResult(type(module).__module__ + "." + type(module).__name__, input_size, diff, agree, stage_diffs)


def _verify_detector(tensors, model, variables, info: ConversionInfo, input_size: int, seed: int):
    """`verify` for an effdet checkpoint; None when effdet is not importable or the model has
    no effdet name."""
    import torch

    if info.model_name is None:
        return None
    try:
        import_torchvision()  # effdet imports timm, which imports torchvision
        import effdet
    except ImportError:
        return None
    step = 2**model.anchors.max_level
    size = -(-input_size // step) * step
    config = effdet.get_efficientdet_config(info.model_name)
    config.image_size = (size, size)  # effdet fixes its resampling sizes at construction
    if info.classifier == "converted":
        config.num_classes = info.num_classes
    module = effdet.EfficientDet(config, pretrained_backbone=False).eval()
    p = info.prefix
    state = {k[len(p):]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith(p)}
    if info.classifier != "converted":  # the class prediction was replaced: keep effdet's own
        state.update({k: v for k, v in module.state_dict().items() if k.startswith("class_net.predict.")})
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConversionError(f"--verify: effdet's {info.model_name} rejects the tensors: {e}") from None
    x = np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        t_cls, t_box = module(torch.from_numpy(x))
    f_cls, f_box = jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1))
    nhwc = [t.permute(0, 2, 3, 1).numpy() for t in t_box]
    level_diffs = [float(np.max(np.abs(a - np.asarray(b)))) for a, b in zip(nhwc, f_box)]
    diff = agree = None
    if info.classifier == "converted":
        t_flat = np.concatenate([t.permute(0, 2, 3, 1).reshape(2, -1).numpy() for t in t_cls], 1)
        f_flat = np.concatenate([np.asarray(c).reshape(2, -1) for c in f_cls], 1)
        diff = float(np.max(np.abs(t_flat - f_flat)))
        agree = bool(np.all(t_flat.argmax(-1) == f_flat.argmax(-1)))
    return VerifyResult(type(module).__module__ + "." + type(module).__name__, size, diff, agree, level_diffs)
