"""Input-pipeline throughput on ImageNet-sized JPEGs made from real photos.

    python -m deit_jax.bench.input_pipeline [--images=256] [--threads=1] [--seconds=20]
        [--source=imagefolder|array_record] [--json]

Builds an image folder of ~500x375 JPEGs cut from scikit-image's sample photographs
(pip install scikit-image; nothing is downloaded), then times the full DeiT train
transform (RandomResizedCrop with window decoding, flip, RandAugment rand-m9-mstd0.5-inc1,
normalisation, random erasing) through the real tf.data pipeline on ``--threads`` cores,
switching the stages on one at a time so you see where the time goes.

``--source=array_record`` stores the same JPEGs as a TFDS dataset in the array_record
format (in the temporary folder, as deit_jax prepares ImageNet) and reads them by random
access, as training does; it first times raw record reads through the pipeline (no
decoding), one Python call per record against the batched reads, back to back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from typing import NamedTuple  # noqa: E402

from absl import flags  # noqa: E402

from deit_jax import cli  # noqa: E402
from deit_jax.data import pipeline, sources  # noqa: E402
from deit_jax.errors import UserError  # noqa: E402

_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
           "retina", "immunohistochemistry", "colorwheel")


def photo_crops(count: int, size=(375, 500), seed: int = 0):
  """``count`` JPEG-encoded images of ``size`` (h, w) cut (random crop, scale, flip) from
  scikit-image's real sample photographs, one after another."""
  try:  # optional: the [bench] and [test] extras
    from skimage import data as skdata
  except ImportError:
    raise UserError("real sample photos need scikit-image: pip install scikit-image") from None
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
  for i in range(count):
    photo = photos[i % len(photos)]
    scale = rng.uniform(0.6, 1.0)
    h, w = int(photo.shape[0] * scale), int(photo.shape[1] * scale)
    top, left = rng.randint(0, photo.shape[0] - h + 1), rng.randint(0, photo.shape[1] - w + 1)
    crop = tf.image.resize(photo[top:top + h, left:left + w], size, antialias=True)
    if rng.rand() < 0.5:
      crop = crop[:, ::-1]
    yield tf.io.encode_jpeg(tf.cast(tf.round(crop), tf.uint8), quality=90).numpy()


def make_image_folder(root: str, count: int, size=(375, 500), seed: int = 0) -> str:
  """``count`` JPEGs of ``size`` cut from real sample photos (``photo_crops``)."""
  folder = os.path.join(root, "train", "photos")
  os.makedirs(folder, exist_ok=True)
  for i, jpeg in enumerate(photo_crops(count, size, seed)):
    tf.io.write_file(os.path.join(folder, f"{i:05d}.jpg"), jpeg)
  return root


def make_array_record_dataset(folder_root: str, data_dir: str, num_classes: int = 10):
  """The JPEGs of ``make_image_folder`` as a TFDS dataset in the array_record format
  (labels i % num_classes); returns its prepared builder."""
  import tensorflow_datasets as tfds
  folder = os.path.join(folder_root, "train", "photos")
  paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=num_classes)})
  examples = [(i, {"image": path, "label": i % num_classes}) for i, path in enumerate(paths)]
  return tfds.dataset_builders.store_as_tfds_dataset(
      name="deit_jax_bench_jpegs", version="1.0.0", features=features,
      split_datasets={"train": examples}, data_dir=data_dir, file_format="array_record")


class Rate(NamedTuple):
  per_sec: float      # items per wall-clock second
  per_cpu_sec: float  # items per second of this process's CPU time (all its threads):
                      # what one core gives, also on a machine shared with other jobs


def read_throughput(source, threads: int, seconds: float, batch: int = 256) -> Rate:
  """Records through the train pipeline's index stream and reads, without decoding."""
  def keep(example, unused_seed, unused_position):
    return {"image": example["image"], "label": example["label"], "id": example["id"]}

  ds = pipeline.train_positions(source.num_examples, pipeline.HostSlice(batch), seed=0)
  ds = pipeline.map_examples(ds, source, keep).batch(batch).prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()  # as train_dataset(threads=...) sets them
  options.deterministic = True
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return _rate(iter(ds.with_options(options)), batch, seconds)


def _rate(iterator, batch: int, seconds: float) -> Rate:
  next(iterator)  # warm-up: graph tracing, thread start
  count, start, cpu_start = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - start < seconds:
    next(iterator)
    count += batch
  return Rate(count / (time.perf_counter() - start),
              count / (time.process_time() - cpu_start))


def pipeline_throughput(source, config, threads: int, seconds: float, batch: int = 64) -> Rate:
  ds = pipeline.train_dataset(source, config, pipeline.HostSlice(batch), seed=0,
                              threads=threads)
  return _rate(iter(ds), batch, seconds)


def stage_profile(source, size: int, threads: int,
                  seconds: float) -> list[tuple[str, Rate, float]]:
  """(stage, rate with the stages so far, CPU ms per image the stage adds), through the
  real pipeline with stages switched on one at a time."""
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
    ms = 1000.0 / rate.per_cpu_sec
    results.append((name, rate, ms - previous_ms))
    previous_ms = ms
  return results


def _define_flags() -> None:
  flags.DEFINE_integer("images", 256, "JPEGs to make and read")
  flags.DEFINE_integer("threads", 1, "cores given to tf.data")
  flags.DEFINE_float("seconds", 20.0, "seconds timed per stage")
  flags.DEFINE_integer("size", 224, "output image size")
  flags.DEFINE_enum("source", "imagefolder", ["imagefolder", "array_record"],
                    "read the JPEGs as an image folder or as a TFDS array_record dataset")
  flags.DEFINE_bool("json", False, "print one JSON object instead of the table")


def _open(root: str, kind: str):
  if kind == "imagefolder":
    return sources.open_source(f"imagefolder:{root}", "train")
  builder = make_array_record_dataset(root, os.path.join(root, "tfds"))
  return sources.from_builder(builder, "train", in_memory_limit_bytes=0)


def _read_figures(source, threads: int, seconds: float) -> dict:
  """Raw reads one record per Python call, then batched, back to back."""
  per_record = read_throughput(dataclasses.replace(source, fetch_batch=None), threads,
                               seconds)
  batched = read_throughput(source, threads, seconds)
  return {"read_batch": source.read_batch,
          "per_record_reads_per_sec": per_record.per_sec,
          "per_record_reads_per_cpu_sec": per_record.per_cpu_sec,
          "batched_reads_per_sec": batched.per_sec,
          "batched_reads_per_cpu_sec": batched.per_cpu_sec,
          "batched_over_per_record": batched.per_sec / per_record.per_sec,
          "batched_over_per_record_cpu": batched.per_cpu_sec / per_record.per_cpu_sec}


def main() -> int:
  args = flags.FLAGS
  with tempfile.TemporaryDirectory() as root:
    make_image_folder(root, args.images)
    source = _open(root, args.source)
    reads = (_read_figures(source, args.threads, args.seconds)
             if source.fetch_batch is not None else {})
    profile = stage_profile(source, args.size, args.threads, args.seconds)
  figures = {"source": args.source, "threads": args.threads,
             "full_recipe_img_per_sec": profile[-1][1].per_sec,
             "full_recipe_img_per_sec_per_core": profile[-1][1].per_sec / args.threads,
             "full_recipe_img_per_cpu_sec": profile[-1][1].per_cpu_sec,
             "crop_only_img_per_sec": profile[0][1].per_sec,
             "profile_ms_per_image": {name: ms for name, _, ms in profile}, **reads}
  if args.json:
    print(json.dumps(figures))
    return 0
  print(f"input pipeline on {args.threads} core(s), {args.images} JPEGs ~500x375 from real "
        f"photos ({args.source}), output {args.size}x{args.size}:")
  if reads:
    print(f"  raw reads, one per call      {reads['per_record_reads_per_sec']:8.0f} records/s "
          f"({reads['per_record_reads_per_cpu_sec']:.0f} per CPU-second)")
    print(f"  raw reads, {reads['read_batch']:4d} per call     "
          f"{reads['batched_reads_per_sec']:8.0f} records/s "
          f"({reads['batched_reads_per_cpu_sec']:.0f} per CPU-second; "
          f"{reads['batched_over_per_record']:.1f}x, "
          f"{reads['batched_over_per_record_cpu']:.1f}x per CPU-second)")
  print(f"  full DeiT train transform   {figures['full_recipe_img_per_sec']:8.1f} img/s "
        f"({figures['full_recipe_img_per_sec_per_core']:.1f} per core, "
        f"{figures['full_recipe_img_per_cpu_sec']:.1f} per CPU-second)")
  print("profile (stages switched on one by one; img/s so far, CPU ms/image the stage "
        "adds):")
  for name, rate, ms in profile:
    print(f"  {name:32s} {rate.per_sec:8.1f} img/s  {ms:+7.2f} ms")
  return 0


if __name__ == "__main__":
  _define_flags()
  cli.run_plain(main)
