"""A checkpoint's row of the paper's Table 5: top-1 on ImageNet validation, ImageNet-ReaL
and ImageNet-V2 (matched frequency in the paper), with its size, image size and, when
asked, inference throughput.

    python -m deit_jax.table5 --config=configs/<file>.py --checkpoint=PATH \\
        [--real_labels=real.json | --real_labels=imagenet2012_real] \\
        [--v2=imagenet_v2/matched-frequency | --v2=imagefolder:ROOT --v2_split=FOLDER] \\
        [--throughput [--throughput_batch_size=auto]] [--ema | --best] [--json]

ImageNet and ReaL come from one pass over the validation images: the config's dataset
(TFDS ``imagenet2012`` or an image folder of the validation files) with the sets of
``real.json`` looked up by file name, or TFDS ``imagenet2012_real`` (its records carry the
original label and the set); without ``--real_labels`` the row has no ReaL column (it
says so). ImageNet-V2 is a second pass: a TFDS ``imagenet_v2`` config
(split ``test``) or the extracted folders ``0`` ... ``999`` as ``imagefolder:`` (classes
by number). Each column is ``deit_jax.evaluate`` of that split: the head average for a
distilled model, as the paper reports, with each head's figure in the JSON. The paper's
own figures for each model: the docstrings of ``configs/deit_*.py``.

Throughput is not measured unless ``--throughput`` is given: it then times the jitted
eval-mode forward of this architecture with ``deit_jax.bench.benchmark --mode=infer``
(random weights and inputs on the device, float32, the fastest batch size of its sweep),
which is what the paper's column measures (one 16GB V100, largest batch). Long on a CPU.
``--json`` prints one JSON object as the last line of stdout (accuracies in percent).
"""

from __future__ import annotations

import json

import jax
import numpy as np
from absl import flags

from deit_jax import checkpoint, cli, evaluate
from deit_jax.data import real_labels

FLAGS = flags.FLAGS
_ARCH_TYPES = (bool, int, float)


def throughput(info: dict, batch_size: str) -> dict:
  """``deit_jax.bench.benchmark --mode=infer`` of the checkpoint's architecture."""
  from deit_jax.bench import benchmark  # the benchmark's own imports only when asked
  overrides = [f"--override={k}={v}" for k, v in (info.get("overrides") or {}).items()
               if isinstance(v, _ARCH_TYPES) and k != "dtype"]
  result = benchmark.main([f"--model={info['name']}", "--mode=infer",
                           f"--batch_size={batch_size}", "--dtype=float32", *overrides])
  return {k: result[k] for k in ("images_per_sec", "batch_size", "device_kind", "num_devices")}


def run_cli(config) -> dict:
  path = checkpoint.best_directory(FLAGS.checkpoint) if FLAGS.best else FLAGS.checkpoint
  loaded = evaluate.load(config, path, ema=FLAGS.ema)
  if not FLAGS.real_labels:  # the columns it can: ReaL is marked as not given
    imagenet = evaluate.evaluate_split(config, loaded, FLAGS.split or config.eval_split)
  elif real_labels.is_real_dataset(FLAGS.real_labels):
    imagenet = evaluate.evaluate_split(config, loaded, "validation", dataset=FLAGS.real_labels)
  else:
    imagenet = evaluate.evaluate_split(config, loaded, FLAGS.split or config.eval_split,
                                       real_json=FLAGS.real_labels)
  v2 = evaluate.evaluate_split(config, loaded, FLAGS.v2_split, dataset=FLAGS.v2)
  info = loaded.info
  row = dict(model=info["name"], checkpoint=info["path"], step=info["step"],
             image_size=config.aug.image_size,
             params=int(sum(np.size(x) for x in jax.tree.leaves(loaded.params))),
             top1_imagenet=imagenet["top1"], top1_real=imagenet.get("top1_real"),
             top1_v2=v2["top1"], imagenet=imagenet, v2=v2, throughput=None)
  if FLAGS.throughput:
    row["throughput"] = throughput(info, FLAGS.throughput_batch_size)
  _print(row)
  if FLAGS.json:
    cli.say(json.dumps(row, sort_keys=True))
  return row


def _print(row: dict) -> None:
  imagenet, v2 = row["imagenet"], row["v2"]
  heads = lambda r, key: (f"; cls {r[key + '_cls']:.2f}, dist {r[key + '_dist']:.2f}"
                          if r[key + "_cls"] != r[key + "_dist"] else "")
  speed = row["throughput"]
  cli.say(f"{row['model']} ({row['checkpoint']}" + (f", step {row['step']}" if row["step"]
                                                   else "") + "): the paper's Table 5 columns")
  cli.say(f"  params        {row['params'] / 1e6:.2f}M")
  cli.say(f"  image size    {row['image_size']}")
  cli.say("  throughput    " + (
      f"{speed['images_per_sec']:.1f} images/s (batch {speed['batch_size']}, float32, "
      f"{speed['num_devices']} x {speed['device_kind']})" if speed else
      "not measured (--throughput times inference with deit_jax.bench.benchmark)"))
  cli.say(f"  ImageNet top1 {row['top1_imagenet']:.2f}%  ({imagenet['dataset']}/"
          f"{imagenet['split']}, {imagenet['num_examples']} images{heads(imagenet, 'top1')})")
  if row["top1_real"] is None:
    cli.say("  ReaL top1     not given (--real_labels: real.json from github.com/"
            "google-research/reassessed-imagenet, or imagenet2012_real)")
  else:
    cli.say(f"  ReaL top1     {row['top1_real']:.2f}%  ({imagenet['num_examples_real']} "
            f"images with a label set{heads(imagenet, 'top1_real')})")
  cli.say(f"  V2 top1       {row['top1_v2']:.2f}%  ({v2['dataset']}/{v2['split']}, "
          f"{v2['num_examples']} images{heads(v2, 'top1')})")


def main() -> None:
  cli.define_flags()
  cli.define_checkpoint_flags(default_split="eval_split")
  flags.DEFINE_string("real_labels", None, "ReaL label sets: the real.json file, or "
                      f"{real_labels.REAL_DATASET} (the TFDS dataset, which then also gives "
                      "the ImageNet column)")
  flags.DEFINE_string("v2", "imagenet_v2/matched-frequency", "ImageNet-V2: a TFDS "
                      "imagenet_v2 config (matched-frequency, threshold-0.7, topimages) or "
                      "imagefolder:ROOT of the extracted folders")
  flags.DEFINE_string("v2_split", "test", "split of --v2 (an image folder: the folder under "
                      "ROOT, e.g. imagenetv2-matched-frequency-format-val)")
  flags.DEFINE_bool("throughput", False, "also time inference (deit_jax.bench.benchmark)")
  flags.DEFINE_string("throughput_batch_size", "auto", "--throughput: batch size, or auto "
                      "(the fastest of the benchmark's sweep)")
  flags.DEFINE_bool("best", False, "the workdir's best checkpoint (as evaluate --best)")
  flags.DEFINE_bool("json", False, "print one JSON object as the last line")
  flags.mark_flag_as_required("checkpoint")
  cli.run(run_cli)


if __name__ == "__main__":
  main()
