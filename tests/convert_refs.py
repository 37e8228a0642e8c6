"""PyTorch reference modules for the two EfficientNet seed formats, and the equivalence check
used by the test_convert_<source>.py files (seeds 002 and 003 are kept in seed002_*.py and
seed003_*.py, one file per seed file).

The seed modules follow the seeds' structure and attribute names exactly (so their state_dict
keys are the seeds'), trimmed of training-only code. One deliberate change, as documented in
the converter: seed 000 passes `stride` to its depthwise convs (the seed's code forgets to),
giving the standard architecture its upstream source and torchvision build.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from flax_effnet.convert.verify import flax_logits_and_stages, torch_logits_and_stages

# The reference forward passes are tiny (64 px); with more than one intra-op thread torch spends
# 50x the CPU time spinning, on a CI runner shared with a second pytest worker.
torch.set_num_threads(1)

TOLERANCE = 1e-4  # max |logit difference| the issue allows (float32, CPU)

# ---------------------------------------------------------------------------------------------
# Seed 000 (features.stem_conv, features.1a.block.{expand_conv,dw_conv,se,project_conv}, top)


def _make_divisible(ch, divisor=8, min_ch=None):
    min_ch = divisor if min_ch is None else min_ch
    new_ch = max(min_ch, int(ch + divisor / 2) // divisor * divisor)
    return new_ch + divisor if new_ch < 0.9 * ch else new_ch


class ConvBnActivation(nn.Sequential):
    def __init__(self, cin, cout, kernel_size=3, stride=1, groups=1, norm_layer=None, activation_layer=nn.SiLU):
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            norm_layer(cout),
            activation_layer(),
        )


class SqueezeExcitation(nn.Module):
    def __init__(self, in_channels, expand_channels, squeeze_factor=4):
        super().__init__()
        squeeze_c = in_channels // squeeze_factor
        self.fc1 = nn.Conv2d(expand_channels, squeeze_c, 1)
        self.ac1 = nn.SiLU()
        self.fc2 = nn.Conv2d(squeeze_c, expand_channels, 1)
        self.ac2 = nn.Sigmoid()

    def forward(self, x):
        scale = F.adaptive_avg_pool2d(x, output_size=(1, 1))
        return self.ac2(self.fc2(self.ac1(self.fc1(scale)))) * x


class InvertedResidual(nn.Module):
    def __init__(self, kernel_size, cin, cout, expand_ratio, stride, norm_layer):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = cin * expand_ratio
        layers = OrderedDict()
        if expanded != cin:
            layers["expand_conv"] = ConvBnActivation(cin, expanded, 1, norm_layer=norm_layer)
        # The seed omits stride=stride here; the standard architecture has it.
        layers["dw_conv"] = ConvBnActivation(
            expanded, expanded, kernel_size, stride=stride, groups=expanded, norm_layer=norm_layer
        )
        layers["se"] = SqueezeExcitation(cin, expanded)
        layers["project_conv"] = ConvBnActivation(
            expanded, cout, 1, norm_layer=norm_layer, activation_layer=nn.Identity
        )
        self.block = nn.Sequential(layers)

    def forward(self, x):
        result = self.block(x)
        return result + x if self.use_res_connect else result


class Seed000EfficientNet(nn.Module):
    """Seed 000's `EfficientNet(width_coefficient, depth_coefficient, num_classes, dropout_ratio)`."""

    default_config = [
        [3, 32, 16, 1, 1, 1],
        [3, 16, 24, 6, 2, 2],
        [5, 24, 40, 6, 2, 2],
        [3, 40, 80, 6, 2, 3],
        [5, 80, 112, 6, 1, 3],
        [5, 112, 192, 6, 2, 4],
        [3, 192, 320, 6, 1, 1],
    ]

    def __init__(self, width, depth, num_classes=1000, dropout_ratio=0.2, classifier_name="classifier"):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.1)
        adjust = lambda c: _make_divisible(c * width, 8)  # noqa: E731
        layers = OrderedDict()
        layers["stem_conv"] = ConvBnActivation(3, adjust(32), 3, stride=2, norm_layer=norm_layer)
        self.stage_names = []
        for stage, (k, cin, cout, ratio, stride, repeats) in enumerate(self.default_config):
            for i in range(int(math.ceil(depth * repeats))):
                name = str(stage + 1) + chr(i + 97)
                layers[name] = InvertedResidual(
                    k, adjust(cin) if i == 0 else adjust(cout), adjust(cout), ratio, stride if i == 0 else 1, norm_layer
                )
            self.stage_names.append(name)
        layers["top"] = ConvBnActivation(adjust(320), adjust(1280), 1, norm_layer=norm_layer)
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier_name = classifier_name
        setattr(self, classifier_name, nn.Sequential(nn.Dropout(p=dropout_ratio), nn.Linear(adjust(1280), num_classes)))

    def stages(self):
        return [getattr(self.features, n) for n in self.stage_names]

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return getattr(self, self.classifier_name)(x)


# (width, depth, dropout) of seed 000's efficientnet_b0 .. b7 (and seed 004's coefficients).
SEED_COEFFICIENTS = {
    "b0": (1.0, 1.0, 0.2),
    "b1": (1.0, 1.1, 0.2),
    "b2": (1.1, 1.2, 0.3),
    "b3": (1.2, 1.4, 0.3),
    "b4": (1.4, 1.8, 0.4),
    "b5": (1.6, 2.2, 0.4),
    "b6": (1.8, 2.6, 0.5),
    "b7": (2.0, 3.1, 0.5),
}


def seed000(variant, num_classes=1000, classifier_name="classifier"):
    width, depth, dropout = SEED_COEFFICIENTS[variant]
    return Seed000EfficientNet(width, depth, num_classes, dropout, classifier_name)


# ---------------------------------------------------------------------------------------------
# Seed 004 (init_conv.conv.conv, stages.S.layers.I.{expand_conv,dp_conv,se,project_conv}, fc)


def _pair(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


class SamePaddingConv2d(nn.Module):
    """TF SAME padding computed once from the input shape given at construction."""

    def __init__(self, in_spatial_shape, in_channels, out_channels, kernel_size, stride, **kwargs):
        super().__init__()
        in_h, in_w = _pair(in_spatial_shape)
        (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
        out_h, out_w = int(math.ceil(in_h / sh)), int(math.ceil(in_w / sw))
        pad_h = max((out_h - 1) * sh + kh - in_h, 0)
        pad_w = max((out_w - 1) * sw + kw - in_w, 0)
        paddings = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        self.zero_pad = nn.ZeroPad2d(paddings) if any(paddings) else None
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, **kwargs)
        self.out_spatial_shape = (out_h, out_w)

    def forward(self, x):
        return self.conv(self.zero_pad(x) if self.zero_pad is not None else x)


class ConvBNAct(nn.Module):
    def __init__(self, out_channels, activation=None, bn_epsilon=None, bn_momentum=None, same_padding=False, **kwargs):
        super().__init__()
        self.conv = (SamePaddingConv2d if same_padding else nn.Conv2d)(out_channels=out_channels, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_epsilon, momentum=bn_momentum)
        self.activation = activation

    @property
    def out_spatial_shape(self):
        return self.conv.out_spatial_shape

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.activation(x) if self.activation is not None else x


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class SqueezeExcitate(nn.Module):
    def __init__(self, in_channels, se_size, activation):
        super().__init__()
        self.dim_reduce = nn.Conv2d(in_channels, se_size, 1)
        self.dim_restore = nn.Conv2d(se_size, in_channels, 1)
        self.activation = activation

    def forward(self, x):
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return torch.sigmoid(self.dim_restore(self.activation(self.dim_reduce(x))))


class MBConvBlock(nn.Module):
    def __init__(self, in_spatial_shape, in_channels, out_channels, kernel_size, stride, expansion_factor, activation, bn_epsilon, bn_momentum, se_size):
        super().__init__()
        exp = in_channels * expansion_factor
        bn = dict(bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
        self.expand_conv = (
            ConvBNAct(in_channels=in_channels, out_channels=exp, kernel_size=1, bias=False, activation=activation, **bn)
            if expansion_factor != 1
            else None
        )
        self.dp_conv = ConvBNAct(
            in_spatial_shape=in_spatial_shape, in_channels=exp, out_channels=exp, kernel_size=kernel_size,
            stride=stride, groups=exp, bias=False, activation=activation, same_padding=True, **bn,
        )
        self.se = SqueezeExcitate(exp, se_size, activation)
        self.skip_enabled = in_channels == out_channels and stride == 1
        self.project_conv = ConvBNAct(in_channels=exp, out_channels=out_channels, kernel_size=1, bias=False, activation=None, **bn)

    def forward(self, x):
        inp = x
        if self.expand_conv is not None:
            x = self.expand_conv(x)
        x = self.dp_conv(x)
        x = self.se(x) * x
        x = self.project_conv(x)
        return x + inp if self.skip_enabled else x


class EnetStage(nn.Module):
    def __init__(self, num_layers, in_spatial_shape, in_channels, out_channels, stride, se_ratio, **kwargs):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            layer = MBConvBlock(in_spatial_shape, in_channels, out_channels, stride=stride,
                                se_size=max(1, in_channels // se_ratio), **kwargs)
            self.layers.append(layer)
            in_spatial_shape, stride, in_channels = layer.dp_conv.out_spatial_shape, 1, out_channels

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Seed004EfficientNet(nn.Module):
    """Seed 004's `EfficientNet(b, in_spatial_shape=..., n_classes=...)`, eps 1e-3, momentum 0.01."""

    # block_repeat, kernel_size, stride, expansion_factor, input_channels, output_channels, se_ratio
    stage_args = [
        [1, 3, 1, 1, 32, 16, 4],
        [2, 3, 2, 6, 16, 24, 4],
        [2, 5, 2, 6, 24, 40, 4],
        [3, 3, 2, 6, 40, 80, 4],
        [3, 5, 1, 6, 80, 112, 4],
        [4, 5, 2, 6, 112, 192, 4],
        [1, 3, 1, 6, 192, 320, 4],
    ]

    def __init__(self, variant, in_spatial_shape, n_classes=1000, bn_epsilon=1e-3, bn_momentum=0.01):
        super().__init__()
        width, depth, dropout = SEED_COEFFICIENTS[variant]
        act = Swish()
        div = lambda c: _make_divisible(c * width, 8)  # noqa: E731  (seed's _make_divisible(c, w))
        bn = dict(bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
        self.init_conv = ConvBNAct(
            in_spatial_shape=in_spatial_shape, in_channels=3, out_channels=div(32), kernel_size=(3, 3),
            stride=(2, 2), bias=False, activation=act, same_padding=True, **bn,
        )
        shape = self.init_conv.out_spatial_shape
        self.stages = nn.ModuleList()
        for repeats, k, stride, exp, cin, cout, se_ratio in self.stage_args:
            stage = EnetStage(int(math.ceil(depth * repeats)), shape, div(cin), div(cout), stride, se_ratio,
                              kernel_size=k, expansion_factor=exp, activation=act, **bn)
            self.stages.append(stage)
            shape = stage.layers[-1].dp_conv.out_spatial_shape
        self.head_conv = ConvBNAct(in_channels=div(320), out_channels=div(1280), kernel_size=(1, 1), bias=False, activation=act, **bn)
        self.dropout = nn.Dropout(p=dropout)
        self.avpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(div(1280), n_classes)

    def forward(self, x):
        x = self.init_conv(x)
        for stage in self.stages:
            x = stage(x)
        x = torch.flatten(self.avpool(self.head_conv(x)), 1)
        return self.fc(self.dropout(x))


# ---------------------------------------------------------------------------------------------
# Randomisation and the equivalence check


@torch.no_grad()
def randomize(module: nn.Module, x: np.ndarray, seed: int = 0, bn_scale: float = 1.0) -> nn.Module:
    """Random weights everywhere, BatchNorm affine *and* running statistics included.

    A fresh init (mean 0, var 1, scale 1, bias 0) hides eps and mean/var mistakes. Plain random
    running statistics, though, let activations grow without bound through b7's 55 blocks
    (each residual block adds a branch proportional to its input). So each BN's statistics are
    set from what actually reaches it in eval mode on the batch `x` (NCHW) the test will run,
    in one forward pass (a pre-hook sets them just before the layer runs, so every layer sees
    the already-perturbed ones upstream), then perturbed per channel: mean shifted by
    N(0, 0.3) standard deviations, variance scaled by U(0.5, 2) and kept above 5 % of the
    layer's mean variance (near-constant channels would otherwise amplify float32 rounding).
    Activations stay O(1) on `x`; every statistic is still arbitrary. `bn_scale` multiplies
    the BN scales (U(0.5, 1.5) by default): at 1.5, more BN outputs pass ReLU6's clip at 6 often
    enough that ReLU6 and ReLU give different logits (`clipped_fraction`).
    """
    g = torch.Generator().manual_seed(seed)
    hooks = []

    def calibrate(bn, inputs):
        x = inputs[0]
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3)).mean()
        c = bn.num_features
        bn.running_mean.copy_(mean.mean() + torch.randn(c, generator=g) * 0.3 * var.sqrt())
        bn.running_var.copy_(var * (torch.rand(c, generator=g) * 1.5 + 0.5))

    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.5 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.copy_((torch.rand(c, generator=g) + 0.5) * bn_scale)
            m.bias.copy_(torch.randn(c, generator=g) * 0.2)
            hooks.append(m.register_forward_pre_hook(calibrate))
    module.eval()
    try:
        module(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    return module


@torch.no_grad()
def clipped_fraction(module: nn.Module, x: np.ndarray) -> float:
    """The fraction of the model's ReLU6 outputs on `x` that are clipped at 6."""
    counts = [0, 0]

    def count(_m, _i, out):  # 6.0 exactly: the clip (a conv/BN output is never exactly 6)
        counts[0] += int((out >= 6).sum())
        counts[1] += out.numel()

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, nn.ReLU6)]
    try:
        module(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    assert hooks, f"{type(module).__name__} has no nn.ReLU6"
    return counts[0] / max(counts[1], 1)


def image(size: int, seed: int = 0, batch: int = 2) -> np.ndarray:
    """A random NCHW float32 batch."""
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def compare(torch_model, stage_modules, model, variables, x: np.ndarray) -> dict:
    """Run both models on the NCHW batch `x`; the logit and per-stage differences."""
    t_logits, t_stages = torch_logits_and_stages(torch_model, stage_modules, x)
    f_logits, f_stages = flax_logits_and_stages(model, variables, x.transpose(0, 2, 3, 1))
    assert len(t_stages) == len(f_stages) > 0
    stages, scales = [], []
    for s, (a, b) in enumerate(zip(t_stages, f_stages)):
        assert a.shape == b.shape, f"stage {s}: torch {a.shape} vs flax {b.shape}"
        stages.append(float(np.max(np.abs(a - b))))
        scales.append(float(np.max(np.abs(a))))
    return {
        "logit_diff": float(np.max(np.abs(t_logits - f_logits))),
        "stage_diffs": stages,
        "stage_scales": scales,
        "top1_equal": bool(np.all(t_logits.argmax(-1) == f_logits.argmax(-1))),
        "logit_scale": float(np.std(t_logits)),
    }


def assert_equivalent(result: dict, what: str):
    """Logits within TOLERANCE, identical top-1, each stage within TOLERANCE relative to its
    largest activation; a failure names the first diverging stage."""
    rel = [d / max(1.0, s) for d, s in zip(result["stage_diffs"], result["stage_scales"])]
    bad = [s for s, r in enumerate(rel) if not r <= TOLERANCE]
    where = f"first diverging stage: {bad[0]} (max diffs {result['stage_diffs']})" if bad else "stages agree"
    assert result["logit_diff"] <= TOLERANCE, f"{what}: max |logit diff| {result['logit_diff']:.3e}; {where}"
    assert result["top1_equal"], f"{what}: top-1 differs; {where}"
    assert not bad, f"{what}: {where}"
    # Random weights must give logits that vary: a tolerance on near-constant logits proves little.
    assert result["logit_scale"] > 0.05, f"{what}: degenerate logits (std {result['logit_scale']:.3g})"


def check_conversion(torch_model, stage_modules, x, expect: dict, bn_scale: float = 1.0, **convert_kwargs) -> dict:
    """Randomise `torch_model` on `x`, convert its state_dict, check the detected settings
    (`expect`: format, variant, padding, bn_epsilon, ...), compare outputs; returns the result."""
    from flax_effnet.convert import convert_state_dict

    randomize(torch_model, x, bn_scale=bn_scale)
    model, variables, info = convert_state_dict(torch_model.state_dict(), **convert_kwargs)
    for key, value in expect.items():
        assert getattr(info, key) == value, f"{key}: converter chose {getattr(info, key)!r}, expected {value!r}"
    assert model.padding == info.padding and model.bn_epsilon == info.bn_epsilon
    # Grouped-conv depthwise compiles faster on CPU than 'shift'; params and results are the same.
    result = compare(torch_model, stage_modules, model.clone(depthwise_impl="conv"), variables, x)
    result["info"] = info
    # Shown with `pytest -s`; how the per-format numbers in the README were measured.
    print(f"\nEQUIV {info.format} {info.variant} {x.shape[-1]}px max|dlogit| {result['logit_diff']:.2e}")
    return result


VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")
# Spatial sizes. 33 is odd at every stride-2 conv (33, 17, 9, 5, 3); 64 is even at all five
# (64, 32, 16, 8, 4), where TF SAME pads bottom/right only and symmetric padding differs.
ODD, EVEN = 33, 64
