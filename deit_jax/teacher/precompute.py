"""Runs a teacher over a dataset split and stores its logits (``deit_jax.teacher.store``).

Work is split by contiguous id ranges ("chunks" of ``shard_size`` examples): process p of
P takes chunks p, p + P, ...; inside a process the batch is split over its local devices.
A chunk whose shard exists is skipped, so an interrupted precompute resumes where it
stopped. Process 0 writes the manifest once every process has finished.

Per-image mode runs the teacher on the eval transform. Crop-consistent mode (``views=K``)
draws K crop/flip views per image with the train geometry (``pipeline.sample_view``,
seeded by (view_seed, id * K + k)), runs the teacher on each view without photometric
augmentation, and stores the views beside their logits for the train pipeline to replay.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np
import tensorflow as tf
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deit_jax import files
from deit_jax.data import pipeline, sources
from deit_jax.data.sources import Source
from deit_jax.errors import ConfigError, UserError
from deit_jax.teacher import store

# logits_fn: float32 images [B, H, W, C] (normalised) -> float32 logits [B, num_classes]
LogitsFn = Callable[[np.ndarray], np.ndarray]


def jax_logits_fn(model, batch_size: int) -> LogitsFn:
  """Eval-mode forward of an NNX model, jitted, batch split over this process's devices
  (the last batch is padded to keep one compiled shape)."""
  devices = jax.local_devices()
  if batch_size % len(devices):
    raise ConfigError(f"batch size {batch_size} is not divisible by the {len(devices)} "
                     "local devices")
  mesh = Mesh(np.asarray(devices), ("data",))
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x),
                    in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))))
  state = jax.device_put(state, NamedSharding(mesh, P()))

  def logits_fn(images: np.ndarray) -> np.ndarray:
    n = len(images)
    padded = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:],
                                              images.dtype)]) if n < batch_size else images
    return np.asarray(forward(state, padded), np.float32)[:n]

  return logits_fn


def _chunk_dataset(source: Source, augment: pipeline.AugmentConfig, first: int, end: int,
                   views: int, view_seed: int, batch_size: int) -> tf.data.Dataset:
  ids = tf.data.Dataset.range(first, end)
  if views:
    ids = ids.flat_map(lambda i: tf.data.Dataset.range(views).map(lambda k: (i, k)))

    def element(example, k):
      seed = tf.stack([tf.constant(view_seed, tf.int64), example["id"] * views + k])
      view = pipeline.sample_view(example["image"], pipeline.augmentation_seeds(seed), source,
                                  augment)
      return {"image": pipeline.view_transform(example, view, source, augment), "view": view}
  else:
    def element(example):
      return {"image": pipeline.eval_transform(example, source, augment)}
  ds = pipeline.map_examples(ids, source, element)  # batched reads where the source has them
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def precompute(logits_fn: LogitsFn, source: Source, augment: pipeline.AugmentConfig,
               out_dir: str, *, teacher: dict, storage: str = "full", k: int = 10,
               views: int = 0, view_seed: int = 0, batch_size: int = 256,
               shard_size: int = 10_000, log: Callable[[str], None] = print) -> dict:
  """Writes the store for ``source`` into ``out_dir``; returns its manifest."""
  if storage not in ("full", "topk"):
    raise ConfigError(f"storage must be 'full' or 'topk', got {storage!r}")
  if views < 0 or k < 1 or shard_size < 1:
    raise ConfigError(f"need views >= 0, k >= 1, shard_size >= 1 (got {views}, {k}, "
                     f"{shard_size})")
  files.makedirs(out_dir)
  n, pid, nproc = source.num_examples, jax.process_index(), jax.process_count()
  chunks = [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]
  mine = chunks[pid::nproc]
  done = set(files.listdir(out_dir))
  todo = [c for c in mine if store.shard_name(*c) not in done]
  if len(todo) < len(mine):
    log(f"reusing {len(mine) - len(todo)} finished shard(s) in {out_dir}")
  start, images_done, total = time.time(), 0, sum(b - a for a, b in todo) * max(views, 1)
  for first, end in todo:
    logits, stored_views = [], []
    for batch in sources.checked(_chunk_dataset(source, augment, first, end, views, view_seed,
                                                batch_size).as_numpy_iterator(), source):
      logits.append(logits_fn(batch["image"]))
      if views:
        stored_views.append(batch["view"])
      images_done += len(batch["image"])
    logits = np.concatenate(logits)
    if logits.shape[-1] != source.num_classes:
      raise UserError(f"the teacher predicts {logits.shape[-1]} classes, "
                       f"{source.name} has {source.num_classes}")
    arrays = store.compress(logits.reshape((end - first,) + ((views,) if views else ())
                                           + logits.shape[-1:]), storage, k)
    if views:
      arrays["views"] = np.concatenate(stored_views).reshape(end - first, views, -1)
    store.write_shard(out_dir, np.arange(first, end), arrays)
    rate = images_done / max(time.time() - start, 1e-9)
    log(f"ids [{first}, {end}) done: {images_done}/{total} images, {rate:.0f} img/s")
  if nproc > 1:
    multihost_utils.sync_global_devices("deit_jax.teacher.precompute")
  if not todo:  # nothing computed here: the rate measured by the run that did, if any
    rate = store.read_manifest(out_dir).get("images_per_sec") if store.MANIFEST in done else None
  manifest = {
      "teacher": teacher, "dataset": source.name, "split": source.split, "num_examples": n,
      "num_classes": source.num_classes, "storage": storage,
      "k": min(k, source.num_classes) if storage == "topk" else None,
      "views": views, "view_seed": view_seed if views else None,
      "transform": {key: (list(v) if isinstance(v, tuple) else v)
                    for key, v in vars(augment).items() if views or key in pipeline.EVAL_FIELDS},
      "shards": [store.shard_name(*c) for c in chunks],
      "images_per_sec": rate,
  }
  if pid == 0:
    store.write_manifest(out_dir, manifest)
  if nproc > 1:  # every process reads the store back once the manifest is there
    multihost_utils.sync_global_devices("deit_jax.teacher.precompute manifest")
  return manifest
