"""Optimizer pieces of the DeiT recipe (AdamW, warm-up + cosine; DeiT paper Table 9) built
from optax.

The official code (facebookresearch/deit main.py with timm 0.3.2) builds its schedule with
timm's ``create_scheduler``: a ``CosineLRScheduler`` stepped once per epoch, after the
epoch (``lr_scheduler.step(epoch)`` at the end of epoch ``epoch``). ``epoch_cosine`` is
that schedule per step: constant within an epoch, the value timm gives for the previous
epoch. ``warmup_cosine`` is the per-step schedule (warm-up then a cosine over the steps
after it) that short runs use.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from deit_jax.errors import ConfigError

SCHEDULES = ("epoch", "step")


def weight_decay_mask(params, decay_dist_token: bool = True) -> object:
  """True where AdamW applies weight decay.

  The official recipe decays weight matrices and the distillation token: timm's optimizer
  factory leaves out 1-d parameters, biases and the model's ``no_weight_decay()`` names,
  which for the official DistilledVisionTransformer are timm 0.3.2 VisionTransformer's
  {pos_embed, cls_token} (the subclass does not add dist_token). So no biases (qkv's
  included, whatever its rank in our layout), no norm scales, no pos_embed/cls_token. In
  our parameter naming that is the leaves whose name ends in "kernel", plus ``dist_token``
  unless ``decay_dist_token`` is False (later timm versions exclude it).
  """

  def decays(path, leaf):
    del leaf
    last = path[-1]
    name = str(getattr(last, "key", getattr(last, "name", last)))
    return name.endswith("kernel") or (decay_dist_token and name == "dist_token")

  return jax.tree_util.tree_map_with_path(decays, params)


def warmup_cosine(base_lr: float, total_steps: int, warmup_steps: int,
                  warmup_init_lr: float = 1e-6, min_lr: float = 1e-5) -> optax.Schedule:
  """Per step: linear warm-up from ``warmup_init_lr``, then cosine decay to ``min_lr`` over
  the steps after the warm-up."""
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=warmup_init_lr, peak_value=base_lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=min_lr)


def epoch_cosine(base_lr: float, steps_per_epoch: int, epochs: float, warmup_epochs: float,
                 warmup_init_lr: float = 1e-6, min_lr: float = 1e-5) -> optax.Schedule:
  """timm's ``CosineLRScheduler`` as the official DeiT loop steps it, per step.

  timm's value for epoch t (``_get_lr``, warmup_prefix False, one cycle): ``warmup_init_lr
  + t * (base_lr - warmup_init_lr) / warmup_epochs`` while t < warmup_epochs, then
  ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t / epochs)) / 2`` -- the cosine counted
  from epoch 0, not from the end of the warm-up --, ``min_lr`` from t = epochs on. The
  scheduler's constructor sets ``warmup_init_lr`` for epoch 0 and the loop calls
  ``step(epoch)`` after each epoch, so epoch k >= 1 trains with the value for k - 1 (epochs
  0 and 1 both at ``warmup_init_lr``; the peak ``base_lr`` itself is never used).
  """
  if steps_per_epoch < 1 or epochs <= 0:
    raise ConfigError(f"the per-epoch schedule needs steps_per_epoch >= 1 and epochs > 0, got "
                      f"{steps_per_epoch} and {epochs}")

  def schedule(step):
    t = jnp.maximum(jnp.asarray(step) // steps_per_epoch - 1, 0).astype(jnp.float32)
    warm = warmup_init_lr + t * ((base_lr - warmup_init_lr) / max(warmup_epochs, 1e-12))
    cosine = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + jnp.cos(jnp.pi * t / epochs))
    return jnp.where(t < warmup_epochs, warm, jnp.where(t < epochs, cosine, min_lr))

  return schedule


def adamw(schedule: optax.Schedule, params, *, weight_decay: float = 0.05, b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8, grad_clip_norm: float | None = None,
          decay_dist_token: bool = True) -> optax.GradientTransformation:
  """AdamW with DeiT's no-decay set and optional global-norm clipping."""
  chain = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
  chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=weight_decay_mask(params, decay_dist_token)))
  return optax.chain(*chain)


def sgd(schedule: optax.Schedule, params, *, weight_decay: float = 1e-4, momentum: float = 0.9,
        grad_clip_norm: float | None = None,
        decay_dist_token: bool = True) -> optax.GradientTransformation:
  """SGD with Nesterov momentum and L2 weight decay added to the gradient (PyTorch's
  ``SGD(weight_decay=...)``, which timm's ``sgd`` optimizer -- used by the DeiT authors'
  transfer recipe -- builds), on the same no-decay set as AdamW."""
  chain = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
  chain += [optax.add_decayed_weights(weight_decay,
                                     mask=weight_decay_mask(params, decay_dist_token)),
            optax.sgd(schedule, momentum=momentum or None, nesterov=bool(momentum))]
  return optax.chain(*chain)


def create(name: str, schedule: optax.Schedule, params, *, weight_decay: float,
           b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, momentum: float = 0.9,
           grad_clip_norm: float | None = None,
           decay_dist_token: bool = True) -> optax.GradientTransformation:
  """The optimizer ``name`` ("adamw" or "sgd"); each ignores the other's settings."""
  if name == "adamw":
    return adamw(schedule, params, weight_decay=weight_decay, b1=b1, b2=b2, eps=eps,
                 grad_clip_norm=grad_clip_norm, decay_dist_token=decay_dist_token)
  if name == "sgd":
    return sgd(schedule, params, weight_decay=weight_decay, momentum=momentum,
               grad_clip_norm=grad_clip_norm, decay_dist_token=decay_dist_token)
  raise ConfigError(f"optimizer.name must be 'adamw' or 'sgd', got {name!r}")
