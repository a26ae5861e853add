"""The evaluation step and its reduction: top-1/top-5 of the model's eval output (the head
average for distilled models), top-1 of the cls and dist heads alone, the eval loss and,
given teacher logits, student/teacher agreement per head and, given each image's ReaL
label set (``real_label``, a multi-hot row; Beyer et al. 2020, "Are we done with
ImageNet?"), ReaL top-1 per head: a prediction in the set is correct, images with an empty
set are left out -- all summed over the masked (padded) batch, so that every example counts
exactly once across hosts.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import optax

ACCURACIES = ("top1", "top5", "top1_cls", "top1_dist")
AGREEMENTS = ("agreement", "agreement_cls", "agreement_dist")
REAL_ACCURACIES = ("top1_real", "top1_real_cls", "top1_real_dist")


def head_logits(model, images):
  """``(eval output, cls head, dist head)`` logits of a model in eval mode: a distilled
  model's output is the average of its two heads; a plain model's one output is all three."""
  if getattr(model.config, "distilled", False):
    cls_logits, dist_logits = model(images, head="both")
    return (cls_logits + dist_logits) / 2, cls_logits, dist_logits
  logits = model(images)
  return logits, logits, logits


def make_eval_step(model_def) -> Callable:
  """``(params, rest, batch) -> sums`` over the masked batch (jit it with shardings).

  A batch with "teacher_logits" also counts student/teacher agreement of each head.
  """

  def eval_step(params, rest, batch):
    model = model_def.merge(params, rest)
    model.eval()
    images, labels = batch["image"], batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    logits, cls_logits, dist_logits = head_logits(model, images)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hit = lambda lg: (jnp.argmax(lg, -1) == labels).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums = {
        "top1": jnp.sum(hit(logits) * mask),
        "top5": jnp.sum(jnp.any(top5 == labels[:, None], -1).astype(jnp.float32) * mask),
        "top1_cls": jnp.sum(hit(cls_logits) * mask),
        "top1_dist": jnp.sum(hit(dist_logits) * mask),
        "loss": jnp.sum(loss * mask), "count": jnp.sum(mask),
    }
    if "teacher_logits" in batch:
      teacher = jnp.argmax(batch["teacher_logits"], -1)
      agree = lambda lg: jnp.sum((jnp.argmax(lg, -1) == teacher).astype(jnp.float32) * mask)
      sums.update(agreement=agree(logits), agreement_cls=agree(cls_logits),
                  agreement_dist=agree(dist_logits), teacher_top1=jnp.sum(
                      (teacher == labels).astype(jnp.float32) * mask))
    if "real_label" in batch:
      real = batch["real_label"].astype(jnp.float32)          # [B, C] multi-hot
      counted = mask * (jnp.sum(real, -1) > 0)               # an empty set is left out
      in_set = lambda lg: jnp.take_along_axis(real, jnp.argmax(lg, -1)[:, None], -1)[:, 0]
      sums.update(top1_real=jnp.sum(in_set(logits) * counted),
                  top1_real_cls=jnp.sum(in_set(cls_logits) * counted),
                  top1_real_dist=jnp.sum(in_set(dist_logits) * counted),
                  count_real=jnp.sum(counted))
    return sums

  return eval_step


def evaluate(eval_step: Callable, params, rest, batches: Iterable[dict]) -> dict[str, float]:
  """Runs ``eval_step`` over device batches; accuracies and agreements in percent, loss
  per example."""
  totals: dict[str, float] = {}
  for batch in batches:
    for key, value in jax.device_get(eval_step(params, rest, batch)).items():
      totals[key] = totals.get(key, 0.0) + float(value)
  count = max(totals["count"], 1.0)
  result = {k: 100.0 * totals[k] / count for k in ACCURACIES + AGREEMENTS + ("teacher_top1",)
            if k in totals}
  result["loss"] = totals["loss"] / count
  result["num_examples"] = int(totals["count"])
  if "count_real" in totals:
    result.update({k: 100.0 * totals[k] / max(totals["count_real"], 1.0)
                   for k in REAL_ACCURACIES})
    result["num_examples_real"] = int(totals["count_real"])
  return result
