"""What an online teacher sees, measured: its top-1 on the exact augmented (and mixed)
training batches of a run vs on the same examples' clean (eval-transform) images, the
images per-image precomputed logits come from, and how often the online hard label
differs from the one per-image logits give.

    .venv/bin/python launch/online_teacher_check.py \
        --config=configs/fashion_mnist_deit_tiny_distilled.py:full --teacher=WORKDIR \
        [--steps=40] [--config.data_dir=...]

The batches are the trainer's (``pipeline.TrainIterator`` with the config's seed, mixup
drawn with the train step's key), the teacher is loaded as the trainer loads an online
teacher (eval mode: BatchNorm running statistics) in each dtype of --dtypes. With mixup
the "label" of a mixed image is its dominant class, and the per-image label is the argmax
of the clean images' logits mixed like the images (what training with precomputed logits
uses). Prints one line per dtype; ``--json``
adds one JSON object as the last line.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from deit_jax import cli, config_glue  # noqa: E402


def _clean_images(source, augment, ids):
  import tensorflow as tf

  from deit_jax.data import pipeline
  ds = tf.data.Dataset.from_tensor_slices(ids).map(
      lambda i: pipeline.eval_transform(source.fetch(i), source, augment))
  return next(iter(ds.batch(len(ids)).as_numpy_iterator()))


def _logits_fn(path, dtype):
  from flax import nnx

  from deit_jax import checkpoint, train_step as ts
  model, _ = checkpoint.load_trained_model(path, dtype=dtype)
  model_def = ts.ModelDef.of(model)
  _, params, rest = ts.split_model(model)
  state = (nnx.to_pure_dict(params), nnx.to_pure_dict(rest))

  @jax.jit
  def run(state, images):
    teacher = model_def.merge(*state)
    teacher.eval()  # as the train step runs an online teacher
    return teacher(images).astype(jnp.float32)

  return lambda images: np.asarray(run(state, images))


def check(config, teacher: str, steps: int, dtypes: list[str]) -> dict:
  from deit_jax.data import mixup, pipeline
  source = config_glue.open_split(config, config.train_split)
  augment = config_glue.augment_config(config)
  mix = mixup.MixupConfig(**config.mixup.to_dict())
  host = pipeline.HostSlice(config.batch_size, groups=config.batch_groups)
  stream = pipeline.TrainIterator(source, augment, host, seed=config.seed)
  rng = jax.random.key_data(jax.random.key(config.seed))  # the TrainState's rng
  fns = {d: _logits_fn(teacher, d) for d in dtypes}
  hits = {d: {"augmented": 0, "clean": 0, "labels_differ": 0} for d in dtypes}
  count = 0
  for step in range(steps):
    batch = next(stream)
    images, labels = jnp.asarray(batch["image"]), np.asarray(batch["label"])
    clean = _clean_images(source, augment, batch["id"])
    key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
    for d, fn in fns.items():
      clean_logits = per_image = fn(clean)  # what precomputed per-image logits hold
      seen, dominant = images, labels
      if mix.enabled:  # the precomputed path mixes the stored logits like the images
        seen, targets, per_image = mixup.mixup_batch(key, images, jnp.asarray(labels),
                                                     config.num_classes, mix,
                                                     jnp.asarray(per_image))
        dominant = np.asarray(jnp.argmax(targets, -1))
      online = fn(seen).argmax(-1)
      hits[d]["augmented"] += int(np.sum(online == dominant))
      hits[d]["clean"] += int(np.sum(clean_logits.argmax(-1) == labels))
      hits[d]["labels_differ"] += int(np.sum(online != np.asarray(per_image).argmax(-1)))
    count += len(labels)
  result = {d: {k: 100.0 * v / count for k, v in h.items()} for d, h in hits.items()}
  result["examples"] = count
  cli.say(f"teacher {teacher} on {count} training examples ({steps} batches of seed "
          f"{config.seed}; mixup {'on' if mix.enabled else 'off'}):")
  for d in dtypes:
    r = result[d]
    cli.say(f"  {d:9s} top-1 on the augmented batch {r['augmented']:.2f}%, on clean images "
            f"{r['clean']:.2f}%; hard label differs from the per-image one on "
            f"{r['labels_differ']:.2f}%")
  return result


def main(config):
  result = check(config, FLAGS.teacher, FLAGS.steps, FLAGS.dtypes)
  if FLAGS.json:
    cli.say(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  cli.define_flags()
  flags.DEFINE_string("teacher", None, "the teacher: training workdir, orbax step or model dir")
  flags.DEFINE_integer("steps", 40, "training batches to look at")
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "teacher compute dtypes to compare")
  flags.DEFINE_bool("json", False, "print one JSON object as the last line")
  flags.mark_flag_as_required("teacher")
  FLAGS = flags.FLAGS
  cli.run(main)
