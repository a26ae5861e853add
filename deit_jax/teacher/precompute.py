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
from deit_jax.errors import ConfigError, TeacherLogitsError, UserError
from deit_jax.teacher import store

# logits_fn: float32 images [B, H, W, C] (normalised) -> float32 logits [B, num_classes]
LogitsFn = Callable[[np.ndarray], np.ndarray]


# What the forward may use of the memory it finds free (the rest: the input pipeline,
# Python, other processes' growth).
HEADROOM = 0.9
# On the CPU the runtime's peak exceeds the compiled program's buffer estimate (arguments +
# temporaries + outputs): 1.5x for RegNetY-16GF at batches 32 and 64 (docs/teacher.md,
# "Batch and memory"); on accelerators the estimate is taken as it is (not measured there).
CPU_PEAK_FACTOR = 1.6
# Host copies of one batch of images: tf.data's prefetched batch, the one in hand, its
# padded copy.
HOST_BATCH_COPIES = 3


def host_available_bytes() -> int | None:
  """Memory this process may still take on the host: MemAvailable, capped by a cgroup v2
  limit when the process runs under one (containers); None where neither is readable."""
  found = []
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          found.append(int(line.split()[1]) * 1024)
  except OSError:
    pass
  try:
    with open("/sys/fs/cgroup/memory.max") as f:
      limit = f.read().strip()
    with open("/sys/fs/cgroup/memory.current") as f:
      current = int(f.read())
    if limit != "max":
      found.append(int(limit) - current)
  except (OSError, ValueError):
    pass
  return min(found) if found else None


def available_bytes(device) -> int | None:
  """Free memory for ``device``'s computations: the host's for CPU devices (all of them
  together), else the device's limit less what is in use; None where unknown."""
  if device.platform == "cpu":
    return host_available_bytes()
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if not stats or "bytes_limit" not in stats:
    return None
  return stats["bytes_limit"] - stats.get("bytes_in_use", 0)


class _Forward:
  """The eval-mode forward of ``model``, compiled per global batch, batch split over this
  process's devices, with what a batch needs in memory."""

  def __init__(self, model, image_shape: tuple[int, ...]):
    self.devices = jax.local_devices()
    mesh = Mesh(np.asarray(self.devices), ("data",))
    graphdef, state = nnx.split(model)
    self.image_shape = tuple(image_shape)
    self.data = NamedSharding(mesh, P("data"))
    self.forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x),
                           in_shardings=(NamedSharding(mesh, P()), self.data))
    self.state = jax.device_put(state, NamedSharding(mesh, P()))

  def compile(self, batch: int):
    spec = jax.ShapeDtypeStruct((batch,) + self.image_shape, np.float32, sharding=self.data)
    return self.forward.lower(self.state, spec).compile()

  def bytes_needed(self, compiled, batch: int) -> int | None:
    """Per device on accelerators; for CPU devices the host's total (all devices and the
    host's copies of the batch). None where the backend gives no estimate."""
    mem = compiled.memory_analysis()
    if mem is None:
      return None
    device = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
              + mem.temp_size_in_bytes)
    if self.devices[0].platform != "cpu":
      return int(device)
    batch_bytes = batch * int(np.prod(self.image_shape)) * 4
    return int(device * CPU_PEAK_FACTOR * len(self.devices) + HOST_BATCH_COPIES * batch_bytes)


def bytes_needed(model, batch_size: int, image_shape: tuple[int, ...]) -> int | None:
  """What ``jax_logits_fn`` estimates a teacher batch needs (see ``_Forward.bytes_needed``)."""
  forward = _Forward(model, image_shape)
  return forward.bytes_needed(forward.compile(batch_size), batch_size)


def jax_logits_fn(model, batch_size: int, image_shape: tuple[int, ...], *,
                  available: int | None = None,
                  log: Callable[[str], None] = print) -> tuple[LogitsFn, int]:
  """(logits_fn, batch): the eval-mode forward of an NNX model, compiled, batch split over
  this process's devices (the last batch is padded to keep one compiled shape).

  ``batch`` is ``batch_size`` if its estimated memory fits ``HEADROOM`` of ``available``
  (default: what the device or host has free now), else the largest halving of it (a
  multiple of the local device count) that fits, said in one line; logits do not depend
  on the batch. If one image per device does not fit, a one-line ConfigError.
  """
  devices = jax.local_devices()
  if batch_size % len(devices):
    raise ConfigError(f"batch size {batch_size} is not divisible by the {len(devices)} "
                     "local devices")
  forward = _Forward(model, image_shape)
  budget = available if available is not None else available_bytes(devices[0])
  batch, first_need = batch_size, None
  while True:
    compiled = forward.compile(batch)
    need = forward.bytes_needed(compiled, batch)
    if budget is None or need is None or need <= HEADROOM * budget:
      break
    first_need = first_need or need
    smaller = batch // 2 // len(devices) * len(devices)
    if smaller < len(devices):
      raise ConfigError(
          f"the teacher needs ~{need / 1e9:.1f} GB for a batch of {batch}, more than "
          f"{HEADROOM:.0%} of the {budget / 1e9:.1f} GB free (--config.batch_size cannot go "
          "lower): run it on a machine with more memory")
    batch = smaller
  if batch != batch_size:
    log(f"teacher batch {batch_size} would need ~{first_need / 1e9:.1f} GB, "
        f"{budget / 1e9:.1f} GB free: running batches of {batch} (--config.batch_size "
        "or --batch_size sets where this starts; the logits do not depend on it)")

  def logits_fn(images: np.ndarray) -> np.ndarray:
    n = len(images)
    padded = np.concatenate([images, np.zeros((batch - n,) + images.shape[1:],
                                              images.dtype)]) if n < batch else images
    return np.asarray(compiled(forward.state, padded), np.float32)[:n]

  return logits_fn, batch


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


def _check_same_run(out_dir: str, source: Source, teacher: dict, storage: str,
                    views: int) -> None:
  """One line unless the store in ``out_dir`` was made by this teacher from this split, its
  examples in this order (an image folder's ids follow its class order)."""
  m = store.read_manifest(out_dir)
  now = {"dataset": source.name, "split": source.split, "num_examples": source.num_examples,
         "class_names": [str(c) for c in source.class_names], "storage": storage,
         "views": views, "teacher": teacher.get("sha256")}
  before = {**{k: m.get(k) for k in now}, "teacher": m["teacher"].get("sha256")}
  differ = [k for k in now if before[k] is not None and before[k] != now[k]]
  if differ:
    raise TeacherLogitsError(
        f"{out_dir} holds teacher logits of another run (its {', '.join(differ)} differ); "
        "give another --out, or remove it to compute them again")


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
  if store.MANIFEST in done:  # finished shards are reused only for the same run
    _check_same_run(out_dir, source, teacher, storage, views)
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
      "num_classes": source.num_classes, "class_names": [str(c) for c in source.class_names],
      "storage": storage,
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
