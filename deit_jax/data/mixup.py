"""Mixup / CutMix on device, with the semantics of timm's ``Mixup`` in "batch" mode.

The DeiT recipe: ``Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
mode="batch", label_smoothing=0.1)``. Per batch, one coin picks CutMix (prob
``switch_prob``) or Mixup; lambda ~ Beta(alpha, alpha); every example is mixed with its
mirror in the batch (``x.flip(0)``); CutMix pastes a box of area ~(1 - lambda) and then
corrects lambda to the pasted area; targets are smoothed one-hots mixed with the same
lambda. Teacher outputs (logits or probabilities) are mixed with the same lambda and
pairing, so precomputed teacher targets follow the student's mixed view.

Everything is a pure function of a PRNG key, so it runs inside the jitted train step.
``num_groups`` mirrors within contiguous groups of the batch (one group per data-parallel
replica), which is what the official code does under DistributedDataParallel and keeps
the pairing local to each device.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from deit_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MixupConfig:
  mixup_alpha: float = 0.8
  cutmix_alpha: float = 1.0
  prob: float = 1.0           # probability of mixing a batch at all
  switch_prob: float = 0.5    # probability of CutMix when both are enabled
  label_smoothing: float = 0.1
  correct_lam: bool = True    # CutMix lambda = 1 - pasted area (after clipping)

  @property
  def enabled(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class MixParams(NamedTuple):
  lam: jax.Array         # () float32, the weight of the original example (after correction)
  use_cutmix: jax.Array  # () bool
  box: jax.Array         # (4,) int32: y_low, y_high, x_low, x_high (CutMix only)


def sample_mix_params(key: jax.Array, config: MixupConfig, height: int,
                      width: int) -> MixParams:
  """Draws one batch's mixing decision like timm's ``_params_per_batch`` + ``rand_bbox``."""
  k_apply, k_switch, k_mix, k_cut, k_cy, k_cx = jax.random.split(key, 6)
  both = config.mixup_alpha > 0 and config.cutmix_alpha > 0
  if both:
    use_cutmix = jax.random.uniform(k_switch) < config.switch_prob
  else:
    use_cutmix = jnp.asarray(config.cutmix_alpha > 0)
  lam_mixup = (jax.random.beta(k_mix, config.mixup_alpha, config.mixup_alpha)
               if config.mixup_alpha > 0 else jnp.float32(1.0))
  lam_cutmix = (jax.random.beta(k_cut, config.cutmix_alpha, config.cutmix_alpha)
                if config.cutmix_alpha > 0 else jnp.float32(1.0))
  lam = jnp.where(use_cutmix, lam_cutmix, lam_mixup).astype(jnp.float32)
  apply = jax.random.uniform(k_apply) < config.prob if config.enabled else jnp.asarray(False)
  lam = jnp.where(apply, lam, 1.0)
  use_cutmix = use_cutmix & apply

  cy = jax.random.randint(k_cy, (), 0, height)
  cx = jax.random.randint(k_cx, (), 0, width)
  box = cutmix_box(lam, cy, cx, height, width)
  if config.correct_lam:
    area = (box[1] - box[0]) * (box[3] - box[2])
    lam = jnp.where(use_cutmix, 1.0 - area / (height * width), lam).astype(jnp.float32)
  return MixParams(lam, use_cutmix, box)


def cutmix_box(lam: jax.Array, cy: jax.Array, cx: jax.Array, height: int,
               width: int) -> jax.Array:
  """timm's ``rand_bbox`` for a given centre: sides int(size * sqrt(1 - lam)), clipped."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  return jnp.stack([jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height),
                    jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)]
                   ).astype(jnp.int32)


def _mirror(x: jax.Array, num_groups: int) -> jax.Array:
  """``x.flip(0)`` within each of ``num_groups`` contiguous groups of the batch."""
  b = x.shape[0]
  if b % num_groups or (b // num_groups) % 2:
    raise ConfigError(f"mixup needs an even number of examples per group: batch {b} in "
                     f"{num_groups} group(s)")
  grouped = x.reshape((num_groups, b // num_groups) + x.shape[1:])
  return jnp.flip(grouped, axis=1).reshape(x.shape)


def mix_images(images: jax.Array, params: MixParams, num_groups: int = 1) -> jax.Array:
  """Mixes NHWC images with their mirrors: blend (Mixup) or paste the box (CutMix)."""
  mirrored = _mirror(images, num_groups)
  lam = params.lam.astype(images.dtype)
  blended = images * lam + mirrored * (1 - lam)
  h, w = images.shape[1], images.shape[2]
  ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  y0, y1, x0, x1 = params.box
  inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
  pasted = jnp.where(inside[None, :, :, None], mirrored, images)
  return jnp.where(params.use_cutmix, pasted, blended)


def mix_targets(labels: jax.Array, num_classes: int, params: MixParams,
                label_smoothing: float, num_groups: int = 1) -> jax.Array:
  """timm's ``mixup_target``: smoothed one-hots, lam * y + (1 - lam) * y_mirror."""
  off = label_smoothing / num_classes
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  smoothed = one_hot * (1.0 - label_smoothing) + off
  return params.lam * smoothed + (1.0 - params.lam) * _mirror(smoothed, num_groups)


def mix_teacher(teacher: jax.Array, params: MixParams, num_groups: int = 1) -> jax.Array:
  """Mixes per-example teacher outputs (logits or probabilities) like the images."""
  teacher = teacher.astype(jnp.float32)
  return params.lam * teacher + (1.0 - params.lam) * _mirror(teacher, num_groups)


def mixup_batch(key: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int,
                config: MixupConfig, teacher: jax.Array | None = None, num_groups: int = 1):
  """One call for the train step: (mixed images, soft targets, mixed teacher or None)."""
  params = sample_mix_params(key, config, images.shape[1], images.shape[2])
  mixed_teacher = None if teacher is None else mix_teacher(teacher, params, num_groups)
  return (mix_images(images, params, num_groups),
          mix_targets(labels, num_classes, params, config.label_smoothing, num_groups),
          mixed_teacher)
