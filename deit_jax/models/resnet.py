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
import numpy as np
from flax import nnx

from deit_jax.errors import ConfigError


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
    problems = []
    for key in ("num_classes", "img_size", "in_chans", "depth", "width"):
      value = getattr(self, key)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        problems.append(f"{key} must be a positive integer, got {value!r}")
    if not problems and (self.depth - 2) % 6:
      problems.append(f"depth must be 6n + 2 (8, 14, 20, 32, 44, 56, ...), got {self.depth}")
    if self.distilled:
      problems.append("a ResNet has no distillation token (distilled must be False)")
    if not 0.0 <= self.drop_rate < 1.0:
      problems.append(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
    for key in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, key))
      except TypeError:
        problems.append(f"{key} {getattr(self, key)!r} is not a dtype name")
    if problems:
      raise ConfigError("invalid ResNet config: " + "; ".join(problems))


class _Block(nnx.Module):
  """Basic block: conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) -> ReLU."""

  def __init__(self, cin: int, cout: int, stride: int, c: ResNetConfig, rngs: nnx.Rngs):
    conv = lambda i, o, k, s: nnx.Conv(
        i, o, (k, k), strides=(s, s), padding=1 if k == 3 else 0, use_bias=False,
        dtype=c.dtype, param_dtype=c.param_dtype,
        kernel_init=nnx.initializers.he_normal(), rngs=rngs)
    norm = lambda ch, zero=False: nnx.BatchNorm(
        ch, momentum=c.bn_momentum, epsilon=1e-5, dtype=c.dtype, param_dtype=c.param_dtype,
        scale_init=nnx.initializers.zeros_init() if zero else nnx.initializers.ones_init(),
        rngs=rngs)
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
    self.stem = nnx.Conv(c.in_chans, widths[0], (3, 3), padding=1, use_bias=False,
                         dtype=c.dtype, param_dtype=c.param_dtype,
                         kernel_init=nnx.initializers.he_normal(), rngs=rngs)
    self.stem_bn = nnx.BatchNorm(widths[0], momentum=c.bn_momentum, epsilon=1e-5,
                                 dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
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
