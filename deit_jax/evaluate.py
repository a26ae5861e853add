"""Evaluate a checkpoint on a split: top-1/top-5 (the head average for distilled models),
top-1 of each head, the loss and, given teacher logits of the split, student/teacher
agreement per head (``deit_jax.eval_step``); with ImageNet-ReaL label sets, ReaL top-1 per
head too (``deit_jax.data.real_labels``).

    python -m deit_jax.evaluate --config=configs/<file>.py --checkpoint=PATH \
        [--teacher_logits=DIR] [--real_labels=real.json] [--ema | --best] [--split=test] \
        [--json] [--config.key=value ...]

PATH (local or ``gs://``) is a training workdir (its latest committed checkpoint), one
orbax checkpoint step, or a model directory written by ``deit_jax.convert``; a step that
orbax is still writing is never read. ``--best`` takes the workdir's best checkpoint
(kept with ``config.best_metric``; EMA weights if that metric was an EMA one). The
architecture comes from the checkpoint, the data and eval transform from the config.
ReaL: ``--real_labels=real.json`` on the ImageNet validation split (TFDS ``imagenet2012``
or an image folder of its files), or ``--config.dataset=imagenet2012_real`` (TFDS, the sets
in its records). ImageNet-V2: ``--config.dataset=imagenet_v2/matched-frequency
--split=test``, or its extracted folders as ``imagefolder:``. All three at once, as the
paper's Table 5: ``deit_jax.table5``. ``--json`` prints one JSON object as the last line
of stdout (accuracies and agreements in percent).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from absl import flags

from deit_jax import builder, checkpoint, cli, config_glue, sharding, train_step as ts
from deit_jax.data import feeding, real_labels
from deit_jax.errors import UserError
from deit_jax.eval_step import ACCURACIES, AGREEMENTS, REAL_ACCURACIES, evaluate

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Loaded:
  """A checkpoint's model on the config's mesh, with its jitted eval step."""

  info: dict
  mesh: Any
  params: Any
  rest: Any
  eval_step: Callable


def load(config, path: str, *, ema: bool = False) -> Loaded:
  model, info = config_glue.load_model_for(config, path, ema=ema,
                                           dtype=config.model.get("dtype", "float32"))
  mesh = sharding.make_mesh(config.mesh.to_dict())
  params, rest, params_sharding, rest_sharding = builder.device_put_model(model, mesh)
  eval_step = builder.build_eval_step(ts.ModelDef.of(model), params_sharding, rest_sharding,
                                      mesh)
  return Loaded(info, mesh, params, rest, eval_step)


def evaluate_split(config, loaded: Loaded, split: str, *, dataset: str | None = None,
                   real_json: str | None = None, teacher_logits: str | None = None) -> dict:
  """The metrics of ``loaded`` on ``split`` of ``dataset`` (default: the config's), with
  ReaL top-1 when ``real_json`` is given or the dataset carries the sets."""
  if dataset and dataset != config.dataset:
    config = config.copy_and_resolve_references()
    config.dataset = dataset
    config.class_order = "auto"  # the run's setting was for its own dataset
  extras = real_labels.source_extras(config.dataset, real_json)
  if extras and config.subset.classes:
    raise UserError("ReaL label sets use ImageNet-1k's class indices: evaluate them without "
                    "config.subset.classes")
  source = config_glue.open_split(config, split, extras)
  config_glue.check_classes(loaded.info, source)
  teacher = real_labels.wrap(config_glue.eval_teacher(teacher_logits, source), source,
                             real_json)
  batches = feeding.eval_batches(source, config_glue.augment_config(config),
                                 config_glue.host_slice(config.batch_size), loaded.mesh, teacher)
  result = evaluate(loaded.eval_step, loaded.params, loaded.rest, batches)
  info = loaded.info
  result.update(model=info["name"], checkpoint=info["path"], step=info["step"],
                dataset=source.name, split=source.split)
  return result


def report(result: dict) -> None:
  cli.say(f"{result['model']} ({result['checkpoint']}" + (
      f", step {result['step']}" if result["step"] else "") +
          f") on {result['dataset']}/{result['split']}:")
  for key in ACCURACIES + AGREEMENTS + REAL_ACCURACIES + (
      "teacher_top1", "loss", "num_examples", "num_examples_real"):
    if key in result:
      value = result[key]
      text = (f"{value}" if key.startswith("num_") else f"{value:.4f}" if key == "loss"
              else f"{value:.2f}%")
      cli.say(f"  {key:17s} {text}")


def run_cli(config) -> dict:
  path = checkpoint.best_directory(FLAGS.checkpoint) if FLAGS.best else FLAGS.checkpoint
  result = evaluate_split(config, load(config, path, ema=FLAGS.ema),
                          FLAGS.split or config.eval_split, real_json=FLAGS.real_labels,
                          teacher_logits=FLAGS.teacher_logits)
  report(result)
  if FLAGS.json:
    cli.say(json.dumps(result, sort_keys=True))
  return result


def main() -> None:
  cli.define_flags()
  cli.define_checkpoint_flags(default_split="eval_split")
  flags.DEFINE_string("teacher_logits", None, "teacher logits of the eval split (for "
                      "student/teacher agreement)")
  flags.DEFINE_string("real_labels", None, "real.json of ImageNet-ReaL (github.com/google-"
                      "research/reassessed-imagenet): also score ReaL top-1 on the ImageNet "
                      "validation split")
  flags.DEFINE_bool("best", False, "evaluate the workdir's best checkpoint (kept when "
                    "training with config.best_metric; EMA weights for an eval_ema_* metric)")
  flags.DEFINE_bool("json", False, "print one JSON object as the last line")
  flags.mark_flag_as_required("checkpoint")
  cli.run(run_cli)


if __name__ == "__main__":
  main()
