"""PyTorch peers for the throughput benchmark, and a copy of their weights into flax_effnet.

The peers are the EfficientNets people run in PyTorch, and two inference engines (ONNX
Runtime, OpenVINO) running an ONNX export of the PyTorch peer, for eval:

- `efficientnet_pytorch` (lukemelas): TF SAME padding (static, computed for the image size),
  BN eps 1e-3 -> our padding='same'.
- `timm` `efficientnet_bX`: symmetric `(k-1)//2` padding, BN eps 1e-5 -> padding='symmetric'.
- `torchvision` `efficientnet_bX`: symmetric padding, BN eps 1e-5 (b0-b4) or 1e-3 (b5-b7).

The weight copy is a small, explicit table for the benchmark's "same weights" sanity check
(logits within 1e-4 in float32); it is not the project's converter. All three peers register
their tensors in the order of the architecture (stem conv, stem BN, per block: expand conv/BN,
depthwise conv/BN, SE reduce/expand, projection conv/BN, then head conv/BN and classifier), so
one ordered list of our leaf paths, zipped with the state_dict minus `num_batches_tracked`,
maps every tensor; each pair is shape-checked, so a different order cannot pass silently.
"""

from __future__ import annotations

import dataclasses
from typing import Any


from flax_effnet.convert.verify import import_torchvision  # works around torchvision ops vs CPU torch

PEERS = ("efficientnet_pytorch", "timm", "torchvision")


@dataclasses.dataclass
class Peer:
    """A PyTorch model plus the flax_effnet settings that reproduce it."""

    name: str
    model: Any  # torch.nn.Module
    padding: str  # 'same' | 'symmetric'
    bn_epsilon: float


def _first_bn_eps(model) -> float:
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            return float(m.eps)
    raise ValueError("peer model has no BatchNorm2d")


def build_timm_model(model_name: str, num_classes: int = 1000) -> Peer:
    """timm's model of a registered name (`--model mobilenetv2_100`, `rexnet_100`, ...); the
    converter detects its format, so the peer is named 'timm' whatever the family."""
    import_torchvision()  # timm imports torchvision
    import timm

    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    return Peer("timm", model, "symmetric", _first_bn_eps(model))


def build_peer(name: str, variant: str, size: int, num_classes: int = 1000) -> Peer:
    """Build a randomly initialised PyTorch peer of `variant` ('b0'..'b7').

    Raises ImportError (or whatever the import raises) when the package is unusable, so the
    caller can report it and carry on with the other peers.
    """
    if name == "efficientnet_pytorch":
        from efficientnet_pytorch import EfficientNet as EP

        # image_size fixes its static SAME padding; it must be the size we run at.
        model = EP.from_name(f"efficientnet-{variant}", image_size=size, num_classes=num_classes)
        return Peer(name, model, "same", float(model._global_params.batch_norm_epsilon))
    if name == "timm":
        import_torchvision()  # timm imports torchvision
        import timm

        model = timm.create_model(f"efficientnet_{variant}", pretrained=False, num_classes=num_classes)
        return Peer(name, model, "symmetric", _first_bn_eps(model))
    if name == "torchvision":
        torchvision = import_torchvision()
        model = torchvision.models.get_model(f"efficientnet_{variant}", weights=None, num_classes=num_classes)
        return Peer(name, model, "symmetric", _first_bn_eps(model))
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")


CALIBRATION_IMAGES = 8


def calibrate_(model, x, seed: int = 0) -> None:
    """Give a randomly initialised peer realistic activations, in place.

    With PyTorch's default init (BN running mean 0, var 1) activations shrink ~40x per stage,
    so b0's pooled features are ~1e-12: a logits check would compare biases only, and deeper
    variants reach float32 denormals, which are slow on CPUs and would distort timings. One
    train-mode pass with cumulative-average BN sets the running statistics to the batch's, and
    a random BN affine makes every layer matter to the logits.

    The statistics come from at least `CALIBRATION_IMAGES` images: `x` topped up with seeded
    random ones of its size and spread. From one image at 64 px the last stages' BN sees 4
    values per channel, variances reach 1e-4, logits ~2,000, and timm's own float32 logits
    then differ from its float64 ones by 0.7, so no logits check could pass.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    missing = CALIBRATION_IMAGES - x.shape[0]
    if missing > 0:
        extra = torch.randn((missing, *x.shape[1:]), generator=gen, dtype=x.dtype)
        x = torch.cat([x, extra * x.std() + x.mean()])
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    was_training = model.training
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, the batch's statistics
            n = m.num_features
            m.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=gen))
            m.bias.copy_(0.1 * torch.randn(n, generator=gen))
        model.train()
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was_training)


# ----------------------------------------------------------------------------- inference engines

ENGINES = ("onnxruntime", "openvino")


def export_onnx(model, x, path: str) -> str:
    """ONNX export of an eval-mode torch model at `x`'s (static) shape; returns `path`.

    The TorchScript exporter (`dynamo=False`): the dynamo one needs onnxscript and gives the
    engines no faster graph for a static CNN. Opset 17 is what both engines fully optimise.
    """
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"])
    model.train(was_training)
    return path


def build_engine(name: str, onnx_path: str, threads: int, precision: str = "f32",
                 spin: bool = True, profile_prefix: str | None = None):
    """A callable `run(x_nchw_float32_numpy) -> logits numpy` for an inference engine.

    `precision` is OpenVINO's inference precision ('f32' or 'bf16'; bf16 needs avx512_bf16 or
    AMX, else OpenVINO runs f32 and `run.precision` says so); ONNX Runtime's CPU provider runs
    float32 only. `spin=False` stops ONNX Runtime's idle threads from spinning after a call,
    which would take cores from the contestants it is interleaved with. `profile_prefix` turns
    on ONNX Runtime's profiler (files named from it); `run.end_profiling()` returns the file.
    """
    if name == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])

        def run(x):
            return sess.run(None, {"x": x})[0]

        run.version, run.precision = ort.__version__, "f32"
        run.end_profiling = sess.end_profiling
        return run
    if name == "openvino":
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(onnx_path, "CPU", {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
        })
        request = compiled.create_infer_request()

        def run(x):
            request.infer({0: x})
            return request.get_output_tensor(0).data

        run.version = ov.__version__.split("-")[0]  # "2026.4.1-22982-<hash>-releases/..."
        run.precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        return run
    raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
