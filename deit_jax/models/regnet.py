"""RegNetY (Radosavovic et al. 2020, arXiv 2003.13678) in Flax NNX, laid out like timm's
``regnet.py`` so that its weights import key by key (``deit_jax.convert``). RegNetY-16GF
(``regnety_160``) is the teacher of the DeiT paper (arXiv 2012.12877, section 5).

Layout: stem (3x3 conv stride 2, BN, ReLU, 32 channels) -> 4 stages of bottleneck blocks
-> global average pool -> dropout -> linear head. A block (bottleneck ratio 1):
1x1 conv-BN-ReLU -> 3x3 group conv-BN-ReLU (stride 2 in a stage's first block; groups of
``group_size`` channels) -> Squeeze-Excitation -> 1x1 conv-BN, plus the shortcut (identity,
or 1x1 conv stride s + BN where the shape changes), then ReLU. The SE bottleneck is
``round(se_ratio * block input width)`` wide (timm; not the block's own width).

Stage widths and depths come from RegNet's four numbers (w0, wa, wm, depth) and the group
width through the same quantised linear rule as timm's ``generate_regnet`` +
``adjust_widths_groups_comp`` (``regnet_stages``). NHWC input, float32 logits;
``dtype`` is the compute dtype (bf16 on accelerators), ``param_dtype`` the storage one.
Every parameter carries logical axis names: the channel dimension a convolution writes
is "channels" (sharded over the FSDP mesh axis by ``deit_jax.sharding.RULES``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deit_jax.errors import ConfigError
from deit_jax.models.convnet import (batch_norm, conv2d, positive_int_problems,
                                      teacher_config_problems)

LOGICAL_AXES = ("channels", "classes")


def regnet_stages(w0: int, wa: float, wm: float, depth: int, group_size: int,
                  quant: int = 8) -> list[tuple[int, int, int]]:
  """(width, blocks, group size) per stage, computed like timm (float32 arithmetic).

  Block j's continuous width w0 + wa * j is snapped to w0 * wm^round(log_wm(...)),
  quantised to ``quant``; equal widths form a stage. Each stage's group size is capped
  by its width and its width rounded to a multiple of the group size.
  """
  cont = np.arange(depth, dtype=np.float32) * np.float32(wa) + np.float32(w0)
  exps = np.round(np.log(cont / np.float32(w0)) / np.float32(math.log(wm)))
  widths = np.round(np.float32(w0) * np.power(np.float32(wm), exps) / quant) * quant
  stage_widths, stage_depths = np.unique(widths.astype(np.int64), return_counts=True)
  stages = []
  for width, blocks in zip(stage_widths.tolist(), stage_depths.tolist()):
    group = min(group_size, width)
    stages.append((int(round(width / group) * group), int(blocks), group))
  return stages


@dataclasses.dataclass(frozen=True)
class RegNetConfig:
  """Architecture and numerics of one RegNetY variant (all JSON-serialisable)."""

  num_classes: int = 1000
  img_size: int = 224           # informational: the network is fully convolutional
  in_chans: int = 3
  w0: int = 24                  # initial width
  wa: float = 36.44             # width slope
  wm: float = 2.49              # width multiplier between stages (log-quantisation base)
  depth: int = 13               # blocks in all
  group_size: int = 8           # channels per group of the 3x3 convs
  se_ratio: float = 0.25        # SE width / block input width (0: no SE, i.e. RegNetX)
  stem_width: int = 32
  drop_rate: float = 0.0        # dropout before the head
  bn_momentum: float = 0.9      # flax convention: PyTorch's momentum 0.1
  dtype: str = "float32"
  param_dtype: str = "float32"
  distilled: bool = False       # never: a teacher has one head (kept for uniform checks)

  def __post_init__(self):
    problems = positive_int_problems(self, ("num_classes", "img_size", "in_chans", "w0",
                                            "depth", "group_size", "stem_width"))
    if not problems:
      if self.wa < 0 or self.wm <= 1 or self.w0 % 8:
        problems.append(f"need wa >= 0, wm > 1 and w0 a multiple of 8 (got wa={self.wa}, "
                        f"wm={self.wm}, w0={self.w0})")
      elif len(self.stages) != 4:
        problems.append(f"w0={self.w0}, wa={self.wa}, wm={self.wm}, depth={self.depth} give "
                        f"{len(self.stages)} stages; a RegNet has 4")
    if not 0.0 <= self.se_ratio <= 1.0:
      problems.append(f"se_ratio must be in [0, 1], got {self.se_ratio!r}")
    problems += teacher_config_problems(self, "RegNet")
    if problems:
      raise ConfigError("invalid RegNet config: " + "; ".join(problems))

  @property
  def stages(self) -> list[tuple[int, int, int]]:
    return regnet_stages(self.w0, self.wa, self.wm, self.depth, self.group_size)


def _conv_init(kernel: int, cout: int, groups: int = 1):
  """timm's RegNet init: N(0, 2 / fan_out), fan_out = k * k * cout / groups."""
  return nnx.initializers.normal(math.sqrt(2.0 / (kernel * kernel * cout // groups)))


class ConvNormAct(nnx.Module):
  """Conv (no bias) -> BatchNorm (-> ReLU); timm's ``ConvNormAct`` (keys conv, bn)."""

  def __init__(self, cin: int, cout: int, kernel: int, c: RegNetConfig, rngs: nnx.Rngs, *,
               stride: int = 1, groups: int = 1, act: bool = True, zero_scale: bool = False):
    self.conv = conv2d(cin, cout, kernel, stride=stride, groups=groups,
                       kernel_init=_conv_init(kernel, cout, groups), dtype=c.dtype,
                       param_dtype=c.param_dtype, rngs=rngs,
                       names=(None, None, None, "channels"))
    self.bn = batch_norm(cout, momentum=c.bn_momentum, dtype=c.dtype,
                         param_dtype=c.param_dtype, rngs=rngs, zero_scale=zero_scale,
                         names=("channels",))
    self.act = act

  def __call__(self, x):
    x = self.bn(self.conv(x))
    return jax.nn.relu(x) if self.act else x


def _linear(din: int, dout: int, std: float, names, c: RegNetConfig, rngs: nnx.Rngs):
  init = lambda i, n: nnx.with_partitioning(i, n, eager_sharding=False)
  return nnx.Linear(din, dout, dtype=c.dtype, param_dtype=c.param_dtype,
                    kernel_init=init(nnx.initializers.normal(std), names),
                    bias_init=init(nnx.initializers.zeros_init(), names[-1:]), rngs=rngs)


class SqueezeExcite(nnx.Module):
  """x * sigmoid(fc2(relu(fc1(mean_hw(x))))); timm's 1x1 convs fc1/fc2 as dense layers."""

  def __init__(self, channels: int, reduced: int, c: RegNetConfig, rngs: nnx.Rngs):
    self.fc1 = _linear(channels, reduced, math.sqrt(2.0 / reduced), (None, "channels"), c, rngs)
    self.fc2 = _linear(reduced, channels, math.sqrt(2.0 / channels), (None, "channels"), c,
                       rngs)

  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2))
    s = self.fc2(jax.nn.relu(self.fc1(s)))
    return x * jax.nn.sigmoid(s)[:, None, None, :]


class Bottleneck(nnx.Module):
  """RegNet bottleneck block (ratio 1) with SE after the group conv."""

  def __init__(self, cin: int, cout: int, stride: int, group_size: int, c: RegNetConfig,
               rngs: nnx.Rngs):
    self.conv1 = ConvNormAct(cin, cout, 1, c, rngs)
    self.conv2 = ConvNormAct(cout, cout, 3, c, rngs, stride=stride, groups=cout // group_size)
    reduced = int(round(cin * c.se_ratio))
    self.se = SqueezeExcite(cout, reduced, c, rngs) if reduced else None
    # Zero-initialised last BN: every block starts as its shortcut (timm's zero_init_last).
    self.conv3 = ConvNormAct(cout, cout, 1, c, rngs, act=False, zero_scale=True)
    self.downsample = (ConvNormAct(cin, cout, 1, c, rngs, stride=stride, act=False)
                       if cin != cout or stride != 1 else None)

  def __call__(self, x):
    y = self.conv2(self.conv1(x))
    if self.se is not None:
      y = self.se(y)
    y = self.conv3(y)
    return jax.nn.relu(y + (self.downsample(x) if self.downsample is not None else x))


class RegNet(nnx.Module):
  """RegNetY; input NHWC, output float32 logits."""

  def __init__(self, config: RegNetConfig, *, rngs: nnx.Rngs):
    c = self.config = config
    self.stem = ConvNormAct(c.in_chans, c.stem_width, 3, c, rngs, stride=2)
    stages, cin = [], c.stem_width
    for width, blocks, group in c.stages:
      stages.append(nnx.List([Bottleneck(cin if i == 0 else width, width, 2 if i == 0 else 1,
                                         group, c, rngs) for i in range(blocks)]))
      cin = width
    self.stages = nnx.List(stages)
    self.num_features = cin
    self.dropout = nnx.Dropout(c.drop_rate, rngs=rngs)
    self.head = _linear(cin, c.num_classes, 0.01, ("channels", "classes"), c, rngs)

  def __call__(self, x, head: str | None = None):
    del head  # one head: "cls", "dist" and "avg" all mean it
    x = self.stem(x.astype(self.config.dtype))
    for stage in self.stages:
      for block in stage:
        x = block(x)
    x = self.dropout(jnp.mean(x, axis=(1, 2)))
    return self.head(x).astype(jnp.float32)


# timm's model_cfgs for RegNetY: (w0, wa, wm, depth, group_size); the name is the GFLOPs x 10.
REGNETY = {
    "regnety_002": (24, 36.44, 2.49, 13, 8),
    "regnety_004": (48, 27.89, 2.09, 16, 8),
    "regnety_006": (48, 32.54, 2.32, 15, 16),
    "regnety_008": (56, 38.84, 2.4, 14, 16),
    "regnety_016": (48, 20.71, 2.65, 27, 24),
    "regnety_032": (80, 42.63, 2.66, 21, 24),
    "regnety_040": (96, 31.41, 2.24, 22, 64),
    "regnety_064": (112, 33.22, 2.27, 25, 72),
    "regnety_080": (192, 76.82, 2.19, 17, 56),
    "regnety_120": (168, 73.36, 2.37, 19, 112),
    "regnety_160": (200, 106.23, 2.48, 18, 112),
    "regnety_320": (232, 115.89, 2.53, 20, 232),
}
