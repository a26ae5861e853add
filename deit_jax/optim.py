"""Optimizer pieces of the DeiT recipe (AdamW, warm-up + cosine; DeiT paper Table 9) built
from optax."""

from __future__ import annotations

import jax
import optax

from deit_jax.errors import ConfigError

def weight_decay_mask(params) -> object:
  """True where AdamW applies weight decay.

  The official recipe decays weight matrices only: no biases (qkv's included, whatever
  its rank in our layout), no norm scales, no pos_embed/cls_token/dist_token. In our
  parameter naming that is exactly the leaves whose name ends in "kernel".
  """

  def decays(path, leaf):
    del leaf
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last))).endswith("kernel")

  return jax.tree_util.tree_map_with_path(decays, params)


def warmup_cosine(base_lr: float, total_steps: int, warmup_steps: int,
                  warmup_init_lr: float = 1e-6, min_lr: float = 1e-5) -> optax.Schedule:
  """Linear warm-up from ``warmup_init_lr``, then cosine decay to ``min_lr``."""
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=warmup_init_lr, peak_value=base_lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=min_lr)


def adamw(schedule: optax.Schedule, params, *, weight_decay: float = 0.05, b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8,
          grad_clip_norm: float | None = None) -> optax.GradientTransformation:
  """AdamW with DeiT's no-decay set and optional global-norm clipping."""
  chain = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
  chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=weight_decay_mask(params)))
  return optax.chain(*chain)


def sgd(schedule: optax.Schedule, params, *, weight_decay: float = 1e-4, momentum: float = 0.9,
        grad_clip_norm: float | None = None) -> optax.GradientTransformation:
  """SGD with Nesterov momentum and L2 weight decay added to the gradient (PyTorch's
  ``SGD(weight_decay=...)``, which timm's ``sgd`` optimizer -- used by the DeiT authors'
  transfer recipe -- builds), on the same no-decay set as AdamW."""
  chain = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
  chain += [optax.add_decayed_weights(weight_decay, mask=weight_decay_mask(params)),
            optax.sgd(schedule, momentum=momentum or None, nesterov=bool(momentum))]
  return optax.chain(*chain)


def create(name: str, schedule: optax.Schedule, params, *, weight_decay: float,
           b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, momentum: float = 0.9,
           grad_clip_norm: float | None = None) -> optax.GradientTransformation:
  """The optimizer ``name`` ("adamw" or "sgd"); each ignores the other's settings."""
  if name == "adamw":
    return adamw(schedule, params, weight_decay=weight_decay, b1=b1, b2=b2, eps=eps,
                 grad_clip_norm=grad_clip_norm)
  if name == "sgd":
    return sgd(schedule, params, weight_decay=weight_decay, momentum=momentum,
               grad_clip_norm=grad_clip_norm)
  raise ConfigError(f"optimizer.name must be 'adamw' or 'sgd', got {name!r}")
