"""Compact convolutional teachers: the CIFAR ResNets of He et al. (2016, section 4.2).

DeiT's central observation is that a convnet teacher beats a transformer teacher, its
inductive bias being inherited through distillation. On ImageNet the teacher is
RegNetY-16GF (run from timm, see ``deit_jax.teacher``); for small images (Fashion-MNIST,
CIFAR) these ResNets are the teachers we train ourselves with ``deit_jax.main``.

Layout: 3x3 stem conv -> 3 stages of ``n`` basic blocks (widths 16w, 32w, 64w; the
second and third stage halve the resolution; projection shortcuts where the shape
changes) -> global average pool -> linear head. Depth = 6n + 2. BatchNorm statistics
live in ``nnx.BatchStat`` variables, which the train step carries in the state's
``rest`` and updates every step; ``model.eval()`` uses the running averages.

Parameters are small (0.27M for resnet20), so they carry no logical axis names: the
sharding rules replicate them and the batch is split over the data axes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from deit_jax.errors import ConfigError
from deit_jax.models.convnet import (batch_norm, conv2d, positive_int_problems,
                                      teacher_config_problems)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  num_classes: int = 10
  img_size: int = 32            # informational: the network is fully convolutional
  in_chans: int = 3
  depth: int = 20               # 6n + 2
  width: int = 1                # channel multiplier (16w, 32w, 64w)
  drop_rate: float = 0.0        # dropout before the head
  bn_momentum: float = 0.9
  dtype: str = "float32"
  param_dtype: str = "float32"
  distilled: bool = False       # never: a teacher has one head (kept for uniform checks)

  def __post_init__(self):
    problems = positive_int_problems(self, ("num_classes", "img_size", "in_chans", "depth",
                                            "width"))
    if not problems and (self.depth - 2) % 6:
      problems.append(f"depth must be 6n + 2 (8, 14, 20, 32, 44, 56, ...), got {self.depth}")
    problems += teacher_config_problems(self, "ResNet")
    if problems:
      raise ConfigError("invalid ResNet config: " + "; ".join(problems))


def _conv(cin: int, cout: int, kernel: int, stride: int, c: ResNetConfig, rngs: nnx.Rngs):
  return conv2d(cin, cout, kernel, stride=stride, kernel_init=nnx.initializers.he_normal(),
                dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)


def _norm(channels: int, c: ResNetConfig, rngs: nnx.Rngs, zero: bool = False):
  return batch_norm(channels, momentum=c.bn_momentum, dtype=c.dtype, param_dtype=c.param_dtype,
                    rngs=rngs, zero_scale=zero)


class _Block(nnx.Module):
  """Basic block: conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) -> ReLU."""

  def __init__(self, cin: int, cout: int, stride: int, c: ResNetConfig, rngs: nnx.Rngs):
    conv = lambda i, o, k, s: _conv(i, o, k, s, c, rngs)
    norm = lambda ch, zero=False: _norm(ch, c, rngs, zero)
    self.conv1, self.bn1 = conv(cin, cout, 3, stride), norm(cout)
    # The last BN of each residual branch starts at zero: every block begins as identity.
    self.conv2, self.bn2 = conv(cout, cout, 3, 1), norm(cout, zero=True)
    self.shortcut = (nnx.Sequential(conv(cin, cout, 1, stride), norm(cout))
                     if stride != 1 or cin != cout else None)

  def __call__(self, x):
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return jax.nn.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet(nnx.Module):
  """CIFAR-style ResNet; input NHWC, output logits (float32)."""

  def __init__(self, config: ResNetConfig, *, rngs: nnx.Rngs):
    c = self.config = config
    widths = [16 * c.width, 32 * c.width, 64 * c.width]
    n = (c.depth - 2) // 6
    self.stem = _conv(c.in_chans, widths[0], 3, 1, c, rngs)
    self.stem_bn = _norm(widths[0], c, rngs)
    blocks, cin = [], widths[0]
    for stage, cout in enumerate(widths):
      for i in range(n):
        blocks.append(_Block(cin, cout, 2 if stage > 0 and i == 0 else 1, c, rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.dropout = nnx.Dropout(c.drop_rate, rngs=rngs)
    self.head = nnx.Linear(cin, c.num_classes, dtype=c.dtype, param_dtype=c.param_dtype,
                           rngs=rngs)

  def __call__(self, x, head: str | None = None):
    del head  # one head: "cls", "dist" and "avg" all mean it
    x = jax.nn.relu(self.stem_bn(self.stem(x.astype(self.config.dtype))))
    for block in self.blocks:
      x = block(x)
    x = self.dropout(jnp.mean(x, axis=(1, 2)))
    return self.head(x).astype(jnp.float32)
