"""Teacher logits from the command line.

    python -m deit_jax.teacher precompute --config=<the teacher's config> \
        --checkpoint=<its workdir, orbax step or model dir> --split=train --out=DIR \
        [--storage=full|topk --k=10] [--views=K] [--config.key=value ...]
    python -m deit_jax.teacher precompute --config=configs/deit_base.py --timm=regnety_160 \
        --timm_weights=regnety_160.pth --split=train --out=gs://BUCKET/logits/regnety160
    python -m deit_jax.teacher info DIR

``precompute`` is resumable (finished shards are kept) and prints img/s and the storage
per example; ``info`` prints a store's manifest and size.
"""

from __future__ import annotations

import sys

import numpy as np

from absl import flags

from deit_jax import checkpoint, cli, config_glue
from deit_jax.errors import UserError
from deit_jax.teacher import precompute as pc
from deit_jax.teacher.store import TeacherLogits

FLAGS = flags.FLAGS
COMMANDS = ("precompute", "info")


def _define_flags():
  cli.define_flags()
  cli.define_checkpoint_flags(default_split="train_split")
  flags.DEFINE_string("timm", None, "instead of --checkpoint: a timm model name run in "
                      "PyTorch, e.g. regnety_160")
  flags.DEFINE_string("timm_weights", None, "weights file for --timm (.pth/.safetensors)")
  flags.DEFINE_string("out", None, "output directory (local or gs://)")
  flags.DEFINE_enum("storage", "full", ["full", "topk"], "all logits (fp16) or the top k")
  flags.DEFINE_integer("k", 10, "logits kept per example with --storage=topk")
  flags.DEFINE_integer("views", 0, "crop-consistent views per image (0: one per image, "
                       "eval transform)")
  flags.DEFINE_integer("view_seed", 0, "seed of the stored views")
  flags.DEFINE_integer("batch_size", None, "teacher batch (default: the config's)")
  flags.DEFINE_integer("shard_size", 10_000, "examples per output file")


def precompute(config) -> None:
  if not FLAGS.out:
    raise UserError("--out is required")
  if bool(FLAGS.checkpoint) == bool(FLAGS.timm):
    raise UserError("give exactly one teacher: --checkpoint=PATH or --timm=NAME")
  source = config_glue.open_split(config, FLAGS.split or config.train_split)
  augment = config_glue.augment_config(config)
  batch_size = FLAGS.batch_size or config.batch_size
  if FLAGS.timm:
    # Imported only for --timm: it needs PyTorch and timm (the [torch] extra).
    from deit_jax.teacher.torch_teacher import timm_logits_fn
    logits_fn, teacher = timm_logits_fn(FLAGS.timm, FLAGS.timm_weights,
                                        num_classes=config.num_classes,
                                        in_chans=augment.in_chans)
  else:
    model, info = config_glue.load_model_for(config, FLAGS.checkpoint, ema=FLAGS.ema,
                                             role="teacher", source=source)
    size = (augment.image_size, augment.image_size, augment.in_chans)
    logits_fn, batch_size = pc.jax_logits_fn(model, batch_size, size, log=cli.say)
    teacher = {**{k: v for k, v in info.items() if k != "class_names"},
               "sha256": checkpoint.params_digest(model), "ema": FLAGS.ema,
               "framework": "jax"}
  what = f"{FLAGS.views} views per image" if FLAGS.views else "eval transform"
  cli.say(f"teacher {teacher['name']} over {source.name}/{source.split} "
          f"({source.num_examples} examples, {what}) -> {FLAGS.out}")
  manifest = pc.precompute(logits_fn, source, augment, FLAGS.out, teacher=teacher,
                           storage=FLAGS.storage, k=FLAGS.k, views=FLAGS.views,
                           view_seed=FLAGS.view_seed, batch_size=batch_size,
                           shard_size=FLAGS.shard_size, log=cli.say)
  logits = _info(FLAGS.out, manifest)
  if source.labels is not None and not FLAGS.views:
    _label_agreement(logits, source, training=source.split == config.train_split)


# On the training images a teacher this close to the labels gives hard distillation
# nothing but the labels again (docs/distillation_experiments.md, small data).
NEAR_PERFECT = 0.99


def _label_agreement(store: TeacherLogits, source, *, training: bool) -> float:
  """Says how often the stored logits' argmax equals the labels; returns that fraction."""
  logits = store.lookup(np.arange(source.num_examples))
  agreement = float(np.mean(np.argmax(logits, -1) == source.labels))
  cli.say(f"the teacher agrees with the labels on {100 * agreement:.2f}% of "
          f"{source.name}/{source.split}")
  if training and agreement >= NEAR_PERFECT:
    cli.say("note: a teacher this close to the labels on the training images makes hard "
            "distillation repeat them; on small data that was measured to cost accuracy "
            "(docs/distillation_experiments.md#does-distillation-hurt-on-small-data): "
            "compare with distill.type=none or soft")
  return agreement


def _info(path, manifest=None) -> TeacherLogits:
  """Prints what the store at ``path`` holds; returns it (loaded once)."""
  logits = TeacherLogits(path)
  m = logits.manifest
  rate = m.get("images_per_sec")
  cli.say(f"{path}: {m['teacher']['name']} on {m['dataset']}/{m['split']}, "
          f"{m['num_examples']} examples x {m['num_classes']} classes, storage {m['storage']}"
          + (f" (k={m['k']})" if m["storage"] == "topk" else "")
          + (f", {m['views']} views per image" if m["views"] else "")
          + f"; {logits.bytes_per_example():.1f} bytes per example in memory"
          + (f"; precompute {rate:.0f} img/s" if rate else "")
          + (f"; MISSING {logits.missing}" if logits.missing else ""))
  return logits


def main():
  command = sys.argv[1] if len(sys.argv) > 1 else ""
  if command not in COMMANDS:
    cli.fail(f"usage: python -m deit_jax.teacher {{{','.join(COMMANDS)}}} ... "
             f"(got {command!r})")
  del sys.argv[1]
  if command == "info":
    if len(sys.argv) != 2:
      cli.fail("usage: python -m deit_jax.teacher info DIR")
    with cli.one_line_errors():
      _info(sys.argv[1])
    return
  _define_flags()
  cli.run(precompute)


if __name__ == "__main__":
  main()
