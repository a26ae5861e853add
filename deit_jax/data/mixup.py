"""Mixup / CutMix on device, with the semantics of timm's ``Mixup`` in "batch" mode.

The DeiT recipe: ``Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
mode="batch", label_smoothing=0.1)``. Per batch, one coin picks CutMix (prob
``switch_prob``) or Mixup; lambda ~ Beta(alpha, alpha); every example is mixed with its
mirror in the batch (``x.flip(0)``); CutMix pastes a box of area ~(1 - lambda) and then
corrects lambda to the pasted area; targets are smoothed one-hots mixed with the same
lambda. Teacher outputs (logits or probabilities) are mixed with the same lambda and
pairing, so precomputed teacher targets follow the student's mixed view.

Groups (``MixupConfig.groups``, the run's ``config.batch_groups``): the official code calls
timm's Mixup in every training process on that process's batch, so each GPU draws its own
lambda, its own Mixup-or-CutMix choice and its own box, and mirrors within its own batch.
Here the global batch is laid out as ``groups`` equal contiguous groups of rows, one per
GPU of the official run, and every group draws and mirrors on its own. One group (the
default) is one draw for the whole batch, as a single-GPU run.

Everything is a pure function of a PRNG key, so it runs inside the jitted train step:
``draw`` makes the random draws (what timm takes from ``numpy.random``), ``resolve`` turns
them into boxes and corrected lambdas, the ``mix_*`` functions apply them.
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
  groups: int = 1             # independent draws, one per contiguous group of rows

  @property
  def enabled(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class MixDraws(NamedTuple):
  """One batch's random draws, per group, in the order timm's ``Mixup`` takes them from
  ``numpy.random``: rand() < prob, rand() < switch_prob, beta(alpha, alpha), and for CutMix
  ``rand_bbox``'s randint() for the centre row and column."""

  apply: jax.Array       # (G,) bool
  use_cutmix: jax.Array  # (G,) bool (False where not applied)
  lam: jax.Array         # (G,) float32, the Beta draw (1 where not applied)
  center: jax.Array      # (G, 2) int32: cy, cx


class MixParams(NamedTuple):
  """What mixing applies, per group (scalars are taken as one group)."""

  lam: jax.Array         # (G,) float32, the weight of the original example (after correction)
  use_cutmix: jax.Array  # (G,) bool
  box: jax.Array         # (G, 4) int32: y_low, y_high, x_low, x_high (CutMix only)


def _draw_one(key: jax.Array, config: MixupConfig, height: int, width: int):
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
  center = jnp.stack([jax.random.randint(k_cy, (), 0, height),
                      jax.random.randint(k_cx, (), 0, width)]).astype(jnp.int32)
  return MixDraws(apply, use_cutmix & apply, jnp.where(apply, lam, 1.0), center)


def draw(key: jax.Array, config: MixupConfig, height: int, width: int) -> MixDraws:
  """The draws of ``config.groups`` groups: one group uses ``key`` itself, more split it."""
  if config.groups == 1:
    return jax.tree.map(lambda x: x[None], _draw_one(key, config, height, width))
  keys = jax.random.split(key, config.groups)
  return jax.vmap(lambda k: _draw_one(k, config, height, width))(keys)


def resolve(draws: MixDraws, config: MixupConfig, height: int, width: int) -> MixParams:
  """Boxes from the draws, like timm's ``rand_bbox``, and CutMix's corrected lambda."""
  box = jax.vmap(lambda lam, c: cutmix_box(lam, c[0], c[1], height, width))(draws.lam,
                                                                          draws.center)
  lam = draws.lam
  if config.correct_lam:
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    lam = jnp.where(draws.use_cutmix, 1.0 - area / (height * width), lam)
  return MixParams(lam.astype(jnp.float32), draws.use_cutmix, box)


def sample_mix_params(key: jax.Array, config: MixupConfig, height: int,
                      width: int) -> MixParams:
  """Draws one batch's mixing decisions like timm's ``_params_per_batch`` + ``rand_bbox``,
  once per group."""
  return resolve(draw(key, config, height, width), config, height, width)


def cutmix_box(lam: jax.Array, cy: jax.Array, cx: jax.Array, height: int,
               width: int) -> jax.Array:
  """timm's ``rand_bbox`` for a given centre: sides int(size * sqrt(1 - lam)), clipped."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  return jnp.stack([jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height),
                    jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)]
                   ).astype(jnp.int32)


def _per_group(params: MixParams) -> MixParams:
  return MixParams(jnp.reshape(params.lam, (-1,)), jnp.reshape(params.use_cutmix, (-1,)),
                   jnp.reshape(params.box, (-1, 4)))


def _grouped(x: jax.Array, groups: int) -> jax.Array:
  """(B, ...) -> (groups, B / groups, ...), each group of an even size (timm mirrors pairs)."""
  b = x.shape[0]
  if b % groups or (b // groups) % 2:
    raise ConfigError(f"mixup needs an even number of examples per group: batch {b} in "
                      f"{groups} group(s) (config.batch_groups)")
  return x.reshape((groups, b // groups) + x.shape[1:])


def _mix_rows(x: jax.Array, lam: jax.Array) -> jax.Array:
  """lam * x + (1 - lam) * x.flip(0) within each group; ``lam`` (G,)."""
  grouped = _grouped(x, lam.shape[0])
  lam = lam.reshape((-1,) + (1,) * (grouped.ndim - 1))
  mixed = lam * grouped + (1.0 - lam) * jnp.flip(grouped, axis=1)
  return mixed.reshape(x.shape)


def mix_images(images: jax.Array, params: MixParams) -> jax.Array:
  """Mixes NHWC images with their mirrors: blend (Mixup) or paste the box (CutMix)."""
  params = _per_group(params)
  grouped = _grouped(images, params.lam.shape[0])
  mirrored = jnp.flip(grouped, axis=1)
  lam = params.lam.astype(images.dtype)[:, None, None, None, None]
  blended = grouped * lam + mirrored * (1 - lam)
  h, w = images.shape[1], images.shape[2]
  ys, xs = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
  y0, y1, x0, x1 = (params.box[:, i, None, None] for i in range(4))
  inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)            # (G, H, W)
  pasted = jnp.where(inside[:, None, :, :, None], mirrored, grouped)
  cut = params.use_cutmix[:, None, None, None, None]
  return jnp.where(cut, pasted, blended).reshape(images.shape)


def mix_targets(labels: jax.Array, num_classes: int, params: MixParams,
                label_smoothing: float) -> jax.Array:
  """timm's ``mixup_target``: smoothed one-hots, lam * y + (1 - lam) * y_mirror."""
  off = label_smoothing / num_classes
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return _mix_rows(one_hot * (1.0 - label_smoothing) + off, _per_group(params).lam)


def mix_teacher(teacher: jax.Array, params: MixParams) -> jax.Array:
  """Mixes per-example teacher outputs (logits or probabilities) like the images."""
  return _mix_rows(teacher.astype(jnp.float32), _per_group(params).lam)


def mixup_batch(key: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int,
                config: MixupConfig, teacher: jax.Array | None = None):
  """One call for the train step: (mixed images, soft targets, mixed teacher or None)."""
  params = sample_mix_params(key, config, images.shape[1], images.shape[2])
  mixed_teacher = None if teacher is None else mix_teacher(teacher, params)
  return (mix_images(images, params),
          mix_targets(labels, num_classes, params, config.label_smoothing),
          mixed_teacher)
