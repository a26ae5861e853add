"""Convolution and BatchNorm layers shared by the convnets (CIFAR ResNets, RegNetY), with
PyTorch's conventions: symmetric padding ``k // 2`` (``padding="SAME"`` would pad a
stride-2 conv on the right only), no conv bias before a BatchNorm, BatchNorm eps 1e-5.

BatchNorm statistics live in ``nnx.BatchStat`` variables (the state's non-parameter
part, which the train step carries and updates); ``model.eval()`` uses the running
averages. ``names`` gives parameters logical axis names for the sharding rules.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx


def positive_int_problems(config, keys: Sequence[str]) -> list[str]:
  problems = []
  for key in keys:
    value = getattr(config, key)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
      problems.append(f"{key} must be a positive integer, got {value!r}")
  return problems


def teacher_config_problems(config, family: str) -> list[str]:
  """What a convnet config (``distilled``, ``drop_rate``, ``dtype``, ``param_dtype``) gets
  wrong: a convnet has one head, and the dtypes must be dtype names."""
  problems = []
  if config.distilled:
    problems.append(f"a {family} has no distillation token (distilled must be False)")
  if not 0.0 <= config.drop_rate < 1.0:
    problems.append(f"drop_rate must be in [0, 1), got {config.drop_rate!r}")
  return problems + dtype_problems(config)


def dtype_problems(config) -> list[str]:
  """``config.dtype`` / ``param_dtype`` that are not dtype names (any model family)."""
  problems = []
  for key in ("dtype", "param_dtype"):
    try:
      jnp.dtype(getattr(config, key))
    except TypeError:
      problems.append(f"{key} {getattr(config, key)!r} is not a dtype name")
  return problems


def _annotated(init: Callable, names: Sequence[str | None] | None) -> Callable:
  return init if names is None else nnx.with_partitioning(init, tuple(names),
                                                         eager_sharding=False)


def conv2d(cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1,
           kernel_init: Callable, dtype, param_dtype, rngs: nnx.Rngs,
           names: Sequence[str | None] | None = None) -> nnx.Conv:
  """k x k convolution without bias; HWIO kernel ``(k, k, cin // groups, cout)``."""
  return nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride), padding=kernel // 2,
                  feature_group_count=groups, use_bias=False, dtype=dtype,
                  param_dtype=param_dtype, kernel_init=_annotated(kernel_init, names),
                  rngs=rngs)


def batch_norm(channels: int, *, momentum: float, dtype, param_dtype, rngs: nnx.Rngs,
               zero_scale: bool = False,
               names: Sequence[str | None] | None = None) -> nnx.BatchNorm:
  """BatchNorm over the last axis; ``zero_scale`` starts a residual branch at zero."""
  scale = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
  return nnx.BatchNorm(channels, momentum=momentum, epsilon=1e-5, dtype=dtype,
                       param_dtype=param_dtype,
                       scale_init=_annotated(scale, names),
                       bias_init=_annotated(nnx.initializers.zeros_init(), names), rngs=rngs)
