"""Evaluation: top-1/top-5 of the model's eval output (the head average for distilled
models), top-1 of the cls and dist heads alone, the eval loss and, given teacher logits of
the eval split, student/teacher agreement per head -- over a padded, masked eval stream
so that every example counts exactly once across hosts.

    python -m deit_jax.evaluate --config=configs/<file>.py --checkpoint=PATH \
        [--teacher_logits=DIR] [--ema | --best] [--split=test] [--json] [--config.key=value ...]

PATH is a training workdir (its latest checkpoint), one orbax checkpoint step, or a model
directory written by ``deit_jax.convert``; ``--best`` takes the workdir's best checkpoint
(its weights are the EMA ones if the best metric was an EMA one); the architecture comes from the checkpoint,
the data and eval transform from the config. ``--json`` prints one JSON object as the
last line of stdout (accuracies and agreements in percent).
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import optax

_ACCURACIES = ("top1", "top5", "top1_cls", "top1_dist")
_AGREEMENTS = ("agreement", "agreement_cls", "agreement_dist")


def make_eval_step(model_def) -> Callable:
  """``(params, rest, batch) -> sums`` over the masked batch (jit it with shardings).

  A batch with "teacher_logits" also counts student/teacher agreement of each head.
  """

  def eval_step(params, rest, batch):
    model = model_def.merge(params, rest)
    model.eval()
    images, labels = batch["image"], batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    if getattr(model.config, "distilled", False):
      cls_logits, dist_logits = model(images, head="both")
      logits = (cls_logits + dist_logits) / 2
    else:
      logits = cls_logits = dist_logits = model(images)
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
  result = {k: 100.0 * totals[k] / count for k in _ACCURACIES + _AGREEMENTS + ("teacher_top1",)
            if k in totals}
  result["loss"] = totals["loss"] / count
  result["num_examples"] = int(totals["count"])
  return result


def run_cli(config) -> dict:
  import json

  from absl import flags
  from flax import nnx

  from deit_jax import checkpoint, cli, sharding, train_step as ts
  from deit_jax.data import feeding, pipeline

  FLAGS = flags.FLAGS
  path = checkpoint.best_directory(FLAGS.checkpoint) if FLAGS.best else FLAGS.checkpoint
  model, info = checkpoint.load_trained_model(path, ema=FLAGS.ema,
                                              dtype=config.model.get("dtype", "float32"))
  classes = getattr(model.config, "num_classes", None)
  if classes != config.num_classes:
    raise cli.UserError(f"{FLAGS.checkpoint} predicts {classes} classes, "
                        f"config.num_classes is {config.num_classes}")
  source = cli.open_split(config, FLAGS.split or config.eval_split)
  teacher = cli.open_teacher_logits(FLAGS.teacher_logits, source) if FLAGS.teacher_logits \
      else None
  if teacher is not None and teacher.num_views:
    raise cli.UserError(f"{FLAGS.teacher_logits} holds per-view (crop-consistent) logits; "
                        "agreement needs per-image logits of the eval split")
  mesh = sharding.make_mesh(config.mesh.to_dict())
  model_def = ts.ModelDef.of(model)
  _, params, rest = ts.split_model(model)
  params_sharding, rest_sharding = ts.model_shardings(model, mesh)
  params = jax.device_put(nnx.to_pure_dict(params), params_sharding)
  rest = jax.device_put(nnx.to_pure_dict(rest), rest_sharding)
  batch_sharding = sharding.batch_sharding(mesh)
  eval_step = jax.jit(make_eval_step(model_def),
                      in_shardings=(params_sharding, rest_sharding, batch_sharding))
  host_sharding = pipeline.Sharding(config.batch_size, jax.process_index(), jax.process_count())

  def join(batch):
    out = {"image": batch["image"], "label": batch["label"], "mask": batch["mask"]}
    if teacher is not None:
      out["teacher_logits"] = teacher.lookup(batch["id"])
    return out

  batches = pipeline.eval_dataset(source, cli.augment_config(config), host_sharding)
  result = evaluate(eval_step, params, rest,
                    feeding.prefetch_to_device(map(join, batches.as_numpy_iterator()),
                                               batch_sharding))
  result.update(model=info["name"], checkpoint=info["path"], step=info["step"],
                dataset=source.name, split=source.split)
  cli.say(f"{info['name']} ({info['path']}" + (f", step {info['step']}" if info["step"]
                                               else "") + f") on {source.name}/{source.split}:")
  for key in _ACCURACIES + _AGREEMENTS + ("teacher_top1", "loss", "num_examples"):
    if key in result:
      value = result[key]
      text = (f"{value}" if key == "num_examples" else f"{value:.4f}" if key == "loss"
              else f"{value:.2f}%")
      cli.say(f"  {key:15s} {text}")
  if FLAGS.json:
    cli.say(json.dumps(result, sort_keys=True))
  return result


if __name__ == "__main__":
  from absl import flags as _flags

  from deit_jax import cli as _cli

  _cli.define_flags()
  _flags.DEFINE_string("checkpoint", None, "training workdir, orbax step or model directory")
  _flags.DEFINE_string("teacher_logits", None, "teacher logits of the eval split (for "
                       "student/teacher agreement)")
  _flags.DEFINE_string("split", None, "split to evaluate (default: the config's eval_split)")
  _flags.DEFINE_bool("ema", False, "evaluate the checkpoint's EMA parameters")
  _flags.DEFINE_bool("best", False, "evaluate the workdir's best checkpoint (kept when "
                     "training with config.best_metric)")
  _flags.DEFINE_bool("json", False, "print one JSON object as the last line")
  _flags.mark_flag_as_required("checkpoint")
  _cli.run(run_cli)
