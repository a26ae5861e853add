"""Evaluate a checkpoint on a split: top-1/top-5 (the head average for distilled models),
top-1 of each head, the loss and, given teacher logits of the split, student/teacher
agreement per head (``deit_jax.eval_step``).

    python -m deit_jax.evaluate --config=configs/<file>.py --checkpoint=PATH \
        [--teacher_logits=DIR] [--ema | --best] [--split=test] [--json] [--config.key=value ...]

PATH (local or ``gs://``) is a training workdir (its latest committed checkpoint), one
orbax checkpoint step, or a model directory written by ``deit_jax.convert``; a step that
orbax is still writing is never read. ``--best`` takes the workdir's best checkpoint
(kept with ``config.best_metric``; EMA weights if that metric was an EMA one). The
architecture comes from the checkpoint, the data and eval transform from the config.
``--json`` prints one JSON object as the last line of stdout (accuracies and agreements in
percent).
"""

from __future__ import annotations

import json

from absl import flags

from deit_jax import builder, checkpoint, cli, config_glue, sharding, train_step as ts
from deit_jax.data import feeding
from deit_jax.eval_step import ACCURACIES, AGREEMENTS, evaluate

FLAGS = flags.FLAGS


def run_cli(config) -> dict:
  path = checkpoint.best_directory(FLAGS.checkpoint) if FLAGS.best else FLAGS.checkpoint
  model, info = config_glue.load_model_for(config, path, ema=FLAGS.ema,
                                           dtype=config.model.get("dtype", "float32"))
  source = config_glue.open_split(config, FLAGS.split or config.eval_split)
  teacher = config_glue.eval_teacher(FLAGS.teacher_logits, source)
  mesh = sharding.make_mesh(config.mesh.to_dict())
  params, rest, params_sharding, rest_sharding = builder.device_put_model(model, mesh)
  eval_step = builder.build_eval_step(ts.ModelDef.of(model), params_sharding, rest_sharding,
                                      mesh)
  batches = feeding.eval_batches(source, config_glue.augment_config(config),
                             config_glue.host_slice(config.batch_size), mesh, teacher)
  result = evaluate(eval_step, params, rest, batches)
  result.update(model=info["name"], checkpoint=info["path"], step=info["step"],
                dataset=source.name, split=source.split)
  cli.say(f"{info['name']} ({info['path']}" + (f", step {info['step']}" if info["step"]
                                               else "") + f") on {source.name}/{source.split}:")
  for key in ACCURACIES + AGREEMENTS + ("teacher_top1", "loss", "num_examples"):
    if key in result:
      value = result[key]
      text = (f"{value}" if key == "num_examples" else f"{value:.4f}" if key == "loss"
              else f"{value:.2f}%")
      cli.say(f"  {key:15s} {text}")
  if FLAGS.json:
    cli.say(json.dumps(result, sort_keys=True))
  return result


def main() -> None:
  cli.define_flags()
  cli.define_checkpoint_flags(default_split="eval_split")
  flags.DEFINE_string("teacher_logits", None, "teacher logits of the eval split (for "
                      "student/teacher agreement)")
  flags.DEFINE_bool("best", False, "evaluate the workdir's best checkpoint (kept when "
                    "training with config.best_metric; EMA weights for an eval_ema_* metric)")
  flags.DEFINE_bool("json", False, "print one JSON object as the last line")
  flags.mark_flag_as_required("checkpoint")
  cli.run(run_cli)


if __name__ == "__main__":
  main()
