"""Evaluation: top-1/top-5 of the model's eval output (the head average for distilled
models), top-1 of the cls and dist heads alone, and the eval loss, over a padded, masked
eval stream so that every example counts exactly once across hosts."""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import optax

_SUMS = ("top1", "top5", "top1_cls", "top1_dist", "loss", "count")


def make_eval_step(model_def) -> Callable:
  """``(params, rest, batch) -> sums`` over the masked batch (jit it with shardings)."""

  def eval_step(params, rest, batch):
    model = model_def.merge(params, rest)
    model.eval()
    images, labels = batch["image"], batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    if model.config.distilled:
      cls_logits, dist_logits = model(images, head="both")
      logits = (cls_logits + dist_logits) / 2
    else:
      logits = cls_logits = dist_logits = model(images)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hit = lambda lg: (jnp.argmax(lg, -1) == labels).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "top1": jnp.sum(hit(logits) * mask),
        "top5": jnp.sum(jnp.any(top5 == labels[:, None], -1).astype(jnp.float32) * mask),
        "top1_cls": jnp.sum(hit(cls_logits) * mask),
        "top1_dist": jnp.sum(hit(dist_logits) * mask),
        "loss": jnp.sum(loss * mask), "count": jnp.sum(mask),
    }

  return eval_step


def evaluate(eval_step: Callable, params, rest, batches: Iterable[dict]) -> dict[str, float]:
  """Runs ``eval_step`` over device batches; accuracies in percent, loss per example."""
  totals = dict.fromkeys(_SUMS, 0.0)
  for batch in batches:
    sums = eval_step(params, rest, batch)
    for key in _SUMS:
      totals[key] += float(sums[key])
  count = max(totals["count"], 1.0)
  result = {k: 100.0 * totals[k] / count for k in ("top1", "top5", "top1_cls", "top1_dist")}
  result["loss"] = totals["loss"] / count
  result["num_examples"] = int(totals["count"])
  return result
