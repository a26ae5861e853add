"""Evaluation: top-1/top-5 of the model's eval output (the head average for distilled
models), top-1 of the cls and dist heads alone, the eval loss and, given teacher logits of
the eval split, student/teacher agreement per head -- over a padded, masked eval stream
so that every example counts exactly once across hosts.

    python -m deit_jax.evaluate --config=configs/<file>.py --checkpoint=PATH \
        [--teacher_logits=DIR] [--ema] [--split=test] [--json] [--config.key=value ...]

PATH is a training workdir (its latest checkpoint), one orbax checkpoint step, or a model
directory written by ``deit_jax.convert``; the architecture comes from the checkpoint,
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


def load_for_eval(path: str, config, mesh, *, ema: bool = False):
  """A trained model placed on ``mesh`` for evaluation, its class count checked against
  the config: ``(model_def, (params, rest), (params_sharding, rest_sharding), info)``."""
  from flax import nnx

  from deit_jax import checkpoint, cli, train_step as ts
  model, info = checkpoint.load_trained_model(path, ema=ema,
                                              dtype=config.model.get("dtype", "float32"))
  classes = getattr(model.config, "num_classes", None)
  if classes != config.num_classes:
    raise cli.UserError(f"{path} predicts {classes} classes, "
                        f"config.num_classes is {config.num_classes}")
  _, params, rest = ts.split_model(model)
  shardings = ts.model_shardings(model, mesh)
  state = jax.device_put((nnx.to_pure_dict(params), nnx.to_pure_dict(rest)), shardings)
  info["distilled"] = bool(getattr(model.config, "distilled", False))
  return ts.ModelDef.of(model), state, shardings, info


def open_eval_logits(path: str, source):
  """Stored per-image logits of the eval split (per-view logits are refused)."""
  from deit_jax import cli
  logits = cli.open_teacher_logits(path, source)
  if logits.num_views:
    raise cli.UserError(f"{path} holds per-view (crop-consistent) logits; an eval split "
                        "needs per-image logits")
  return logits


def eval_batches(config, source, mesh, join: Callable):
  """The padded, masked eval stream of ``source`` (every example once across hosts), each
  host batch passed through ``join`` and placed on ``mesh``."""
  from deit_jax import cli, sharding
  from deit_jax.data import feeding, pipeline
  host_sharding = pipeline.Sharding(config.batch_size, jax.process_index(), jax.process_count())
  batches = pipeline.eval_dataset(source, cli.augment_config(config), host_sharding)
  return feeding.prefetch_to_device(map(join, batches.as_numpy_iterator()),
                                    sharding.batch_sharding(mesh))


def run_cli(config) -> dict:
  import json

  from absl import flags

  from deit_jax import cli, sharding

  FLAGS = flags.FLAGS
  source = cli.open_split(config, FLAGS.split or config.eval_split)
  teacher = open_eval_logits(FLAGS.teacher_logits, source) if FLAGS.teacher_logits else None
  mesh = sharding.make_mesh(config.mesh.to_dict())
  model_def, (params, rest), shardings, info = load_for_eval(FLAGS.checkpoint, config, mesh,
                                                             ema=FLAGS.ema)
  eval_step = jax.jit(make_eval_step(model_def),
                      in_shardings=(*shardings, sharding.batch_sharding(mesh)))

  def join(batch):
    out = {"image": batch["image"], "label": batch["label"], "mask": batch["mask"]}
    if teacher is not None:
      out["teacher_logits"] = teacher.lookup(batch["id"])
    return out

  result = evaluate(eval_step, params, rest, eval_batches(config, source, mesh, join))
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
  _flags.DEFINE_bool("json", False, "print one JSON object as the last line")
  _flags.mark_flag_as_required("checkpoint")
  _cli.run(run_cli)
