"""Classification and distillation losses with the official DeiT code's semantics.

``deit_loss`` follows facebookresearch/deit ``losses.DistillationLoss`` (DeiT paper,
arXiv 2012.12877, section 4): the class head gets the base criterion against the (mixed,
smoothed) labels, the distillation head gets the teacher term, and

    total = (1 - alpha) * base + alpha * distill       (``none``: total = base)

A plain model (one logits array, no distillation token) gets both terms on its single
class-token output, as in the DeiT paper's Table 3 rows "usual distillation" and "hard
distillation" (arXiv 2012.12877; the official code refuses this combination).

* soft: ``KL(softmax(t/T) || softmax(s_dist/T)) * T^2``, summed and divided by the number
  of logits B*C ("numel", the official code and the published recipe) or by B
  ("batchmean", the paper's per-sample formula).
* hard: ``CE(s_dist, argmax(t))``, batch mean; not label-smoothed by default, as in the
  official code. ``hard_smoothing`` eps smooths the teacher's label (1 - eps + eps/C on it,
  eps/C elsewhere), as the paper's text describes it ("We fix this parameter to eps = 0.1";
  section 4, hard-label distillation). On small data with a teacher that is nearly always
  right on the training images this matters: docs/distillation_experiments.md.

All functions are pure and jit-friendly; shape checks happen at trace time.
"""

from __future__ import annotations

import typing
from typing import Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

Distillation = Literal["none", "soft", "hard"]
KLReduction = Literal["numel", "batchmean"]
DISTILLATIONS: tuple[str, ...] = typing.get_args(Distillation)
KL_REDUCTIONS: tuple[str, ...] = typing.get_args(KLReduction)


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the batch of ``-sum(targets * log_softmax(logits))`` (mixup/cutmix targets)."""
  _check_same_shape("targets", targets, "logits", logits)
  logits = logits.astype(jnp.float32)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets.astype(jnp.float32)))


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """One-hot with ``smoothing`` spread uniformly: off = s/C, on = 1 - s + s/C."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def label_smoothing_cross_entropy(logits: jax.Array, labels: jax.Array,
                                  smoothing: float = 0.1) -> jax.Array:
  """timm's LabelSmoothingCrossEntropy: (1-s) * NLL + s * mean over classes of -log p."""
  if labels.shape != logits.shape[:1]:
    raise ValueError(f"labels of shape {labels.shape} do not match logits {logits.shape}: "
                     "expected one integer label per row")
  targets = smooth_labels(labels, logits.shape[-1], smoothing)
  return soft_target_cross_entropy(logits, targets)


def base_loss(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.1) -> jax.Array:
  """The official criterion: soft-target CE for (B, C) targets, smoothed CE for int labels."""
  if jnp.issubdtype(targets.dtype, jnp.integer):
    return label_smoothing_cross_entropy(logits, targets, label_smoothing)
  return soft_target_cross_entropy(logits, targets)


def soft_distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, *,
                           tau: float = 1.0, kl_reduction: KLReduction = "numel") -> jax.Array:
  """``KL(teacher_T || student_T) * T^2`` with the official (numel) or paper (batchmean) mean."""
  _check_same_shape("teacher_logits", teacher_logits, "student distillation logits",
                    student_logits)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / tau, axis=-1)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / tau, axis=-1)
  kl_sum = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s))
  if kl_reduction == "numel":
    denominator = student_logits.size
  elif kl_reduction == "batchmean":
    denominator = student_logits.shape[0]
  else:
    raise ValueError(f"kl_reduction must be 'numel' or 'batchmean', got {kl_reduction!r}")
  return kl_sum * (tau * tau) / denominator


def hard_distillation_loss(student_logits: jax.Array, teacher: jax.Array,
                           smoothing: float = 0.0) -> jax.Array:
  """CE against the teacher's argmax (``teacher`` may be (B, C) logits or (B,) labels),
  label-smoothed by ``smoothing`` (0: the official code)."""
  if jnp.issubdtype(teacher.dtype, jnp.integer):
    if teacher.shape != student_logits.shape[:1]:
      raise ValueError(f"teacher labels of shape {teacher.shape} do not match student "
                       f"logits {student_logits.shape}")
    teacher_labels = teacher
  else:
    _check_same_shape("teacher_logits", teacher, "student distillation logits",
                      student_logits)
    teacher_labels = jnp.argmax(teacher, axis=-1)
  if smoothing:
    return label_smoothing_cross_entropy(student_logits, teacher_labels, smoothing)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      student_logits.astype(jnp.float32), teacher_labels))


class DeiTLossTerms(NamedTuple):
  total: jax.Array
  base: jax.Array
  distill: jax.Array  # 0 for distillation="none"


def deit_loss_terms(outputs, targets: jax.Array, teacher_logits: jax.Array | None, *,
                    distillation: Distillation = "none", alpha: float = 0.5,
                    tau: float = 1.0, kl_reduction: KLReduction = "numel",
                    label_smoothing: float = 0.1,
                    hard_smoothing: float = 0.0) -> DeiTLossTerms:
  """``deit_loss`` with its parts, for logging."""
  if isinstance(outputs, (tuple, list)):
    if len(outputs) != 2:
      raise ValueError(f"expected outputs (cls_logits, dist_logits), got {len(outputs)} arrays")
    cls_logits, dist_logits = outputs
  else:
    cls_logits, dist_logits = outputs, None
  _check_targets(targets, cls_logits)
  base = base_loss(cls_logits, targets, label_smoothing)
  if distillation == "none":
    return DeiTLossTerms(base, base, jnp.zeros((), jnp.float32))
  if distillation not in ("soft", "hard"):
    raise ValueError(f"distillation must be 'none', 'soft' or 'hard', got {distillation!r}")
  if dist_logits is None:  # class token only: the teacher term goes to the same output
    dist_logits = cls_logits
  if teacher_logits is None:
    raise ValueError(f"distillation={distillation!r} needs teacher_logits")
  if distillation == "soft":
    if jnp.issubdtype(teacher_logits.dtype, jnp.integer):
      raise ValueError("soft distillation needs teacher logits, got integer teacher labels")
    distill = soft_distillation_loss(dist_logits, teacher_logits, tau=tau,
                                     kl_reduction=kl_reduction)
  else:
    distill = hard_distillation_loss(dist_logits, teacher_logits, hard_smoothing)
  return DeiTLossTerms((1.0 - alpha) * base + alpha * distill, base, distill)


def deit_loss(outputs, targets: jax.Array, teacher_logits: jax.Array | None = None, *,
              distillation: Distillation = "none", alpha: float = 0.5, tau: float = 1.0,
              kl_reduction: KLReduction = "numel", label_smoothing: float = 0.1,
              hard_smoothing: float = 0.0) -> jax.Array:
  """The DeiT training loss (scalar float32).

  Args:
    outputs: a distilled model's ``(cls_logits, dist_logits)``, each (B, C), or the
      logits (B, C) of a plain model, which then receive both the base and the teacher
      term (class-token-only distillation).
    targets: int labels (B,) -- label-smoothed by ``label_smoothing`` -- or a (B, C)
      target distribution (mixup/cutmix with smoothing already folded in).
    teacher_logits: (B, C) teacher logits; for ``hard`` also (B,) int teacher labels.
    distillation: "none", "soft" or "hard".
    alpha: weight of the distillation term (lambda in the paper).
    tau: softmax temperature of the soft term.
    kl_reduction: "numel" (official code, default) or "batchmean" (paper formula).
    label_smoothing: smoothing applied to integer ``targets`` only.
    hard_smoothing: smoothing of the teacher's hard label (0, the official code's choice).
  """
  return deit_loss_terms(outputs, targets, teacher_logits, distillation=distillation,
                         alpha=alpha, tau=tau, kl_reduction=kl_reduction,
                         label_smoothing=label_smoothing, hard_smoothing=hard_smoothing).total


def _check_same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
  if tuple(a.shape) != tuple(b.shape):
    raise ValueError(f"{name_a} of shape {tuple(a.shape)} do not match {name_b} of shape "
                     f"{tuple(b.shape)}")


def _check_targets(targets: jax.Array, logits: jax.Array) -> None:
  if logits.ndim != 2:
    raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
  if jnp.issubdtype(targets.dtype, jnp.integer):
    if tuple(targets.shape) != tuple(logits.shape[:1]):
      raise ValueError(f"integer targets of shape {tuple(targets.shape)} do not match logits "
                       f"{tuple(logits.shape)}")
  else:
    _check_same_shape("targets", targets, "logits", logits)


__all__: Sequence[str] = (
    "deit_loss", "deit_loss_terms", "DeiTLossTerms", "soft_target_cross_entropy",
    "label_smoothing_cross_entropy", "smooth_labels", "base_loss", "soft_distillation_loss",
    "hard_distillation_loss")
