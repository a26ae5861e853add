"""Input-pipeline throughput on ImageNet-sized JPEGs made from real photos.

    python -m deit_jax.bench.input_pipeline [--images=256] [--threads=1] [--seconds=20] [--json]

Builds an image folder of ~500x375 JPEGs cut from scikit-image's sample photographs
(pip install scikit-image; nothing is downloaded), then times the full DeiT train
transform (RandomResizedCrop with window decoding, flip, RandAugment rand-m9-mstd0.5-inc1,
normalisation, random erasing) through the real tf.data pipeline on ``--threads`` cores,
switching the stages on one at a time so you see where the time goes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from deit_jax import cli  # noqa: E402
from deit_jax.data import pipeline, sources  # noqa: E402
from deit_jax.errors import UserError  # noqa: E402

_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
           "retina", "immunohistochemistry", "colorwheel")


def make_image_folder(root: str, count: int, size=(375, 500), seed: int = 0) -> str:
  """``count`` JPEGs of ``size`` cut (random crop, scale, flip) from real sample photos."""
  try:  # optional: the [bench] extra
    from skimage import data as skdata
  except ImportError:
    raise UserError("the benchmark needs scikit-image's sample photos: "
                    "pip install scikit-image") from None
  photos = []
  for name in _PHOTOS:
    loader = getattr(skdata, name, None)
    if loader is None:
      continue
    try:
      image = np.asarray(loader())
    except Exception:  # some samples need a download in newer releases; skip those
      continue
    if image.ndim == 3 and image.shape[-1] >= 3 and min(image.shape[:2]) >= 256:
      photos.append(image[..., :3].astype(np.uint8))
  if not photos:
    raise UserError("no usable scikit-image sample photos found")
  rng = np.random.RandomState(seed)
  folder = os.path.join(root, "train", "photos")
  os.makedirs(folder, exist_ok=True)
  for i in range(count):
    photo = photos[i % len(photos)]
    scale = rng.uniform(0.6, 1.0)
    h, w = int(photo.shape[0] * scale), int(photo.shape[1] * scale)
    top, left = rng.randint(0, photo.shape[0] - h + 1), rng.randint(0, photo.shape[1] - w + 1)
    crop = tf.image.resize(photo[top:top + h, left:left + w], size, antialias=True)
    if rng.rand() < 0.5:
      crop = crop[:, ::-1]
    jpeg = tf.io.encode_jpeg(tf.cast(tf.round(crop), tf.uint8), quality=90)
    tf.io.write_file(os.path.join(folder, f"{i:05d}.jpg"), jpeg)
  return root


def pipeline_throughput(source, config, threads: int, seconds: float, batch: int = 64) -> float:
  ds = pipeline.train_dataset(source, config, pipeline.HostSlice(batch), seed=0,
                              threads=threads)
  iterator = iter(ds)
  next(iterator)  # warm-up: graph tracing, thread start
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(iterator)
    count += batch
  return count / (time.perf_counter() - start)


def stage_profile(source, size: int, threads: int,
                  seconds: float) -> list[tuple[str, float, float]]:
  """(stage, img/s with the stages so far, ms per image the stage adds), through the real
  pipeline with stages switched on one at a time."""
  base = dict(image_size=size, repeated_aug=1)
  stages = [
      ("decode crop window + resize", dict(hflip=False, randaugment=None, random_erasing=0.0)),
      ("+ horizontal flip", dict(randaugment=None, random_erasing=0.0)),
      ("+ RandAugment m9-mstd0.5-inc1", dict(random_erasing=0.0)),
      ("+ random erasing (p 0.25)", dict()),
  ]
  results, previous_ms = [], 0.0
  for name, overrides in stages:
    rate = pipeline_throughput(source, pipeline.AugmentConfig(**base, **overrides), threads,
                               seconds)
    ms = 1000.0 / rate * threads
    results.append((name, rate, ms - previous_ms))
    previous_ms = ms
  return results


def _define_flags() -> None:
  flags.DEFINE_integer("images", 256, "JPEGs to make and read")
  flags.DEFINE_integer("threads", 1, "cores given to tf.data")
  flags.DEFINE_float("seconds", 20.0, "seconds timed per stage")
  flags.DEFINE_integer("size", 224, "output image size")
  flags.DEFINE_bool("json", False, "print one JSON object instead of the table")


def main() -> int:
  args = flags.FLAGS
  with tempfile.TemporaryDirectory() as root:
    make_image_folder(root, args.images)
    source = sources.open_source(f"imagefolder:{root}", "train")
    profile = stage_profile(source, args.size, args.threads, args.seconds)
  figures = {"threads": args.threads,
             "full_recipe_img_per_sec": profile[-1][1],
             "full_recipe_img_per_sec_per_core": profile[-1][1] / args.threads,
             "crop_only_img_per_sec": profile[0][1],
             "profile_ms_per_image": {name: ms for name, _, ms in profile}}
  if args.json:
    print(json.dumps(figures))
    return 0
  print(f"input pipeline on {args.threads} core(s), {args.images} JPEGs ~500x375 from real "
        f"photos, output {args.size}x{args.size}:")
  print(f"  full DeiT train transform   {figures['full_recipe_img_per_sec']:8.1f} img/s "
        f"({figures['full_recipe_img_per_sec_per_core']:.1f} per core)")
  print("profile (stages switched on one by one; img/s so far, ms/image the stage adds "
        "per core):")
  for name, rate, ms in profile:
    print(f"  {name:32s} {rate:8.1f} img/s  {ms:+7.2f} ms")
  return 0


if __name__ == "__main__":
  _define_flags()
  cli.run_plain(main)
