"""Random-access example sources: TFDS datasets and image folders.

The input pipeline addresses examples by their index in a split, so that the batch at a
given step is a function of (seed, step) alone -- never of the number of hosts -- and a
restarted run replays it exactly. A source therefore offers ``num_examples`` and a
TensorFlow function ``fetch(index) -> {"image", "label", "id"}``, and where reading one
example at a time is costly, ``fetch_batch(indices) -> {"image": [n], "label": [n], "id":
[n]}`` that returns the same examples for a vector of indices (the pipeline then reads
``read_batch`` indices per call):

* small TFDS datasets with fixed-shape images (fashion_mnist, mnist, cifar10, ...) are
  held in memory as decoded uint8 arrays;
* large TFDS datasets (imagenet2012, ...) are read through TFDS's random-access data
  source, which needs the dataset prepared in the ``array_record`` file format (this
  module prepares it that way when it prepares it; on a non-local data dir such as gs://
  it refuses and names ``deit_jax.data.prepare``, which builds locally and copies the
  result there). ``fetch`` reads one record through
  TFDS's Python decoding; ``fetch_batch`` reads ``read_batch`` raw records in one Python
  call and parses them with ``tf.io.parse_example`` outside the GIL;
* ``imagefolder:<root>`` lists ``<root>/<split>/<class>/<image>`` once, sorted, and reads
  files by path (local or gs://); the classes' order, and so the labels, follow
  ``class_order`` (``deit_jax.data.image_folder``: auto, numeric or string).

``id`` is the example's index in its split (int64): stable for a given prepared dataset,
and the key precomputed teacher logits are joined on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from deit_jax.data import fashion_mnist
from deit_jax.data.image_folder import list_image_folder
from deit_jax.errors import ConfigError, DatasetError, StorageError, some

IN_MEMORY_LIMIT_BYTES = 2 << 30
IN_MEMORY_DECODE_BATCH = 1024  # images per decoding call when a split is loaded in memory
READ_BATCH = 256  # records per Python call of a batched read (docs/performance.md#host-input)
# A read of records that fails is tried again, with the same indices (so the same bits),
# READ_TRIES times in all, after READ_BACKOFF_S seconds and then twice that. Each try
# already includes the storage client's own retries (docs/data.md, "Storage faults").
READ_TRIES = 3
READ_BACKOFF_S = float(os.environ.get("DEIT_JAX_READ_BACKOFF_S", "10"))


@dataclasses.dataclass
class Source:
  """One split, addressable by index."""

  name: str
  split: str
  num_examples: int
  num_classes: int
  channels: int          # 1 or 3 (decoded channel count of the images)
  encoded: bool          # fetch returns encoded bytes (JPEG/PNG) instead of uint8 HWC
  fetch: Callable[[tf.Tensor], dict[str, tf.Tensor]]
  class_names: tuple[str, ...] = ()
  labels: np.ndarray | None = None  # int64 label of every example, where known cheaply
  # fetch for a vector of indices (same examples, same order), where batched reads pay
  fetch_batch: Callable[[tf.Tensor], dict[str, tf.Tensor]] | None = None
  read_batch: int = 1
  # per-example keys fetch returns besides image/label/id, as open_source was asked:
  # "file_name" (a string) and "real_label" (uint8 [num_classes], the ReaL label set)
  extras: tuple[str, ...] = ()
  # reads that failed past every retry (their examples come back unreadable); the
  # iterators stop with StorageError on the first (check_reads)
  read_failures: list[str] = dataclasses.field(default_factory=list)


def check_reads(source: Source) -> None:
  """Raises StorageError if a read of ``source`` failed past every retry: the examples it
  should have given are missing, so the batch in hand is not the one the run would see."""
  if source.read_failures:
    raise StorageError(f"{source.read_failures[0]}; stopped before using an incomplete "
                       "batch (the last checkpoint is kept: the same command resumes once "
                       "the storage answers)")


def checked(batches, source: Source):
  """``batches`` (an iterator over a pass of ``source``), stopping with StorageError once a
  read of ``source`` failed past every retry (its stand-in record would otherwise fail to
  decode with a less telling error, or pass unnoticed)."""
  try:
    for batch in batches:
      check_reads(source)
      yield batch
  except tf.errors.OpError:
    check_reads(source)
    raise
  check_reads(source)


def read_with_retries(read, what: str, failures: list[str], fallback, reopen=None):
  """``read()``, tried READ_TRIES times with backoff (``reopen()`` first: a reader whose
  file failed to open stays broken); after the last failure the failure goes to
  ``failures`` and ``fallback()`` is returned (the caller stops: check_reads)."""
  if failures:  # the run stops at its next batch: no more waiting
    return fallback()
  for attempt in range(READ_TRIES):
    try:
      return read()
    except Exception as e:  # noqa: BLE001 - any reader error; the message names it
      error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
      if attempt + 1 < READ_TRIES:
        wait = READ_BACKOFF_S * 2 ** attempt
        logging.warning("reading %s failed (%s); trying again in %.1f s", what, error, wait)
        time.sleep(wait)
        if reopen is not None:
          try:
            reopen()
          except Exception:  # noqa: BLE001 - the next read reports what is wrong
            pass
  failures.append(f"reading {what} failed {READ_TRIES} times, each after the storage "
                  f"client retries ({error})")
  return fallback()


def open_source(dataset: str, split: str, *, data_dir: str | None = None,
                manual_dir: str | None = None,
                in_memory_limit_bytes: int = IN_MEMORY_LIMIT_BYTES,
                extras: tuple[str, ...] = (), class_order: str = "auto") -> Source:
  """Opens ``dataset`` (a TFDS name or ``imagefolder:<root>``) at ``split``.

  TFDS splits of fixed-shape images up to ``in_memory_limit_bytes`` are held in memory;
  larger ones are read by random access. ``extras`` asks for per-example keys besides
  image/label/id (``Source.extras``); a dataset without them is refused. ``class_order``
  orders an image folder's classes (``deit_jax.data.image_folder``); a TFDS dataset
  brings its own order, so anything but "auto" is refused for one.
  """
  if dataset.startswith("imagefolder:"):
    return _image_folder(dataset[len("imagefolder:"):], split, tuple(extras), class_order)
  if class_order != "auto":
    raise ConfigError(f"class_order={class_order!r} is for image folders; {dataset} orders "
                      "its classes itself (leave class_order=auto)")
  return from_builder(_tfds_builder(dataset, data_dir, manual_dir), split, name=dataset,
                      in_memory_limit_bytes=in_memory_limit_bytes, extras=tuple(extras))


# ---------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------

PREPARE_COMMAND = "python -m deit_jax.data.prepare"
ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD


def is_local(path) -> bool:
  """Whether ``path`` is on this machine's file system (no ``scheme://``, or ``file://``)."""
  path = os.fspath(path)
  return "://" not in path or path.startswith("file://")


def tfds_builder(name: str, data_dir=None, *, file_format=ARRAY_RECORD):
  """The TFDS builder of ``name`` in ``data_dir`` (TFDS's default when None), prepared or
  not: the project's offline Fashion-MNIST builder for ``fashion_mnist``. ``file_format`` is
  for a preparation still to come; an existing preparation keeps its own format."""

  def make(fmt):
    if name == "fashion_mnist":
      return fashion_mnist.FashionMNISTFromManualDir(data_dir=data_dir, file_format=fmt)
    return tfds.builder(name, data_dir=data_dir, file_format=fmt)

  try:
    try:
      return make(file_format)
    except ValueError as e:
      if "File format is already set" not in str(e):
        raise
      return make(None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetError(f"unknown dataset {name!r}: not a TFDS dataset name (or use "
                       "'imagefolder:<root>' for your own images)") from e


def prepare_hint(name: str, data_dir, manual_dir=None) -> str:
  """The command that builds ``name`` on a local disk and copies it to ``data_dir``."""
  manual = f" --manual_dir={manual_dir}" if manual_dir else ""
  return (f"{PREPARE_COMMAND} --dataset={name} --data_dir={data_dir} "
          f"--local_dir=/LOCAL/DISK/tensorflow_datasets{manual}")


def check_writable(builder, name: str, manual_dir=None) -> None:
  """Refuses, in one line and before any work, an ``array_record`` preparation outside the
  local file system: the array_record writer opens local files only, and TFDS writes the
  shards after a full pass over the data (google/array_record#120,
  tensorflow/datasets#10981)."""
  root = os.fspath(builder.data_dir_root)
  if builder.info.file_format == ARRAY_RECORD and not is_local(root):
    raise DatasetError(
        f"{name} is not prepared in {root}, and array_record files cannot be written there "
        f"(the array_record writer writes local files only, after a full pass over the data: "
        f"google/array_record#120, tensorflow/datasets#10981); build it on a local disk and "
        f"copy it: {prepare_hint(name, root, manual_dir)}")


def prepare_builder(builder, name: str, manual_dir=None):
  """``builder`` prepared (in its file format), or the one-line reason it cannot be."""
  if builder.is_prepared():
    return builder
  check_writable(builder, name, manual_dir)
  fmt = builder.info.file_format.value
  if name == "fashion_mnist":
    return fashion_mnist.builder(os.fspath(builder.data_dir_root),
                                 manual_dir or fashion_mnist.DEFAULT_MANUAL_DIR, file_format=fmt)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir))
  except AssertionError as e:  # TFDS signals missing manual files with an assertion
    raise DatasetError(f"{name}: manual files missing: {e}".replace("\n", " ")) from e
  return builder


def _tfds_builder(name: str, data_dir, manual_dir):
  return prepare_builder(tfds_builder(name, data_dir), name, manual_dir)


def prepare_once(dataset: str, *, data_dir=None, manual_dir=None, first: bool,
                 agree: Callable[[bool], bool]) -> None:
  """For a multi-process job: the ``first`` process prepares TFDS ``dataset`` if needed while
  the others wait, so that a shared data dir is written once. ``agree(ok)`` is a barrier
  across all processes that returns the first process's ``ok``; every process calls it once
  per call of this function (``imagefolder:`` datasets need no preparation, and no barrier).
  The first process's error is raised there; the others report that it failed. Afterwards
  each process opens the dataset as usual (a process whose data dir is its own local disk
  still prepares its own copy then)."""
  if dataset.startswith("imagefolder:"):
    return
  error = None
  if first:
    try:
      _tfds_builder(dataset, data_dir, manual_dir)
    except Exception as e:  # re-raised below, after the others have been told
      error = e
  ok = agree(error is None)
  if error is not None:
    raise error
  if not ok:
    raise DatasetError(f"{dataset}: process 0 failed to prepare it (its log says why)")


def _check_split(builder, split: str, name: str) -> int:
  splits = builder.info.splits
  if split not in splits:
    raise DatasetError(f"{name} has no split {split!r} (available: "
                       f"{some(sorted(splits.keys()))})")
  return splits[split].num_examples


def from_builder(builder, split: str, *, name: str | None = None,
                 in_memory_limit_bytes: int = IN_MEMORY_LIMIT_BYTES,
                 extras: tuple[str, ...] = ()) -> Source:
  """The source of a prepared TFDS builder (with "image" and "label" features; or
  "original_label", as ``imagenet2012_real`` names its ImageNet label) at ``split``."""
  name = name or builder.name
  num_examples = _check_split(builder, split, name)
  features = builder.info.features
  label_key = "original_label" if "label" not in features and "original_label" in features \
      else "label"
  missing = [k for k in (label_key, *extras) if k not in features]
  if missing:
    raise DatasetError(f"{name} has no {', '.join(missing)} feature (it has "
                       f"{some(sorted(features.keys()))})")
  image_feature = features["image"]
  label_feature = features[label_key]
  shape = tuple(image_feature.shape)
  channels = shape[-1] if shape and shape[-1] in (1, 3) else 3
  fixed = shape and all(d is not None for d in shape)
  if fixed and not extras and num_examples * int(np.prod(shape)) <= in_memory_limit_bytes:
    images, labels = _load_in_memory(builder, name, split, num_examples, shape[:2] + (channels,),
                                     label_feature, label_key)
    images_t, labels_t = tf.constant(images), tf.constant(labels)

    def fetch(index):
      return {"image": tf.gather(images_t, index), "label": tf.gather(labels_t, index),
              "id": tf.cast(index, tf.int64)}

    return Source(name, split, num_examples, label_feature.num_classes, channels, False, fetch,
                  tuple(label_feature.names), labels)
  return _array_record_source(builder, name, split, num_examples, channels,
                              label_feature, label_key, tuple(extras))


def _load_in_memory(builder, name, split, num_examples, shape, label_feature, label_key):
  """The whole split as (uint8 images of ``shape``, int64 labels), in split order.

  The encoded images are read in batches (array_record: raw records parsed by
  ``tf.io.parse_example``, as the random-access source reads them) and decoded in parallel, a
  batch per call: Python never touches one example (Fashion-MNIST's 60,000 training images:
  1.7-3.0 s instead of 5.5-5.8 s through TFDS's per-example decoding, AMD EPYC, 2 cores)."""
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    source = _array_record_source(builder, name, split, num_examples, shape[-1], label_feature,
                                  label_key)
    encoded = tf.data.Dataset.range(num_examples).batch(IN_MEMORY_DECODE_BATCH).map(
        source.fetch_batch, num_parallel_calls=tf.data.AUTOTUNE)
  else:
    encoded = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()},
                                 read_config=tfds.ReadConfig(interleave_cycle_length=1))
    encoded = encoded.map(lambda ex: {"image": ex["image"], "label": ex[label_key]}).batch(
        IN_MEMORY_DECODE_BATCH)

  def decode(batch):
    images = tf.map_fn(
        lambda image: tf.io.decode_image(image, channels=shape[-1], expand_animations=False),
        batch["image"], fn_output_signature=tf.TensorSpec(shape, tf.uint8),
        parallel_iterations=32)
    return images, tf.cast(batch["label"], tf.int64)

  decoded = encoded.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  images, labels = zip(*decoded.as_numpy_iterator())
  return np.concatenate(images), np.concatenate(labels)


def _array_record_source(builder, name, split, num_examples, channels, label_feature,
                         label_key="label", extras=()):
  def open_sources():
    return (builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()}),
            builder.as_data_source(split=split,
                                   deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES))

  try:
    opened = list(open_sources())  # [decoded, raw]; opened again after a failed read
  except Exception as e:  # TFDS raises assorted types for a non-array_record preparation
    raise DatasetError(
        f"{name} in {builder.data_dir} was not prepared in the array_record format, which "
        f"random access needs; prepare it again into an empty data dir: "
        f"{prepare_hint(name, '<NEW_DATA_DIR>')} ({e})") from e

  num_classes = label_feature.num_classes
  extra_types = {"file_name": (tf.string, ()), "real_label": (tf.uint8, (num_classes,))}

  def read(index):
    record = read_with_retries(lambda: opened[0][int(index)],
                               f"record {int(index)} of {name}/{split}", failures, lambda: None,
                               reopen)
    if record is None:
      return (b"", np.int64(-1)) + tuple(
          b"" if key == "file_name" else np.zeros(num_classes, np.uint8) for key in extras)
    out = [record["image"], np.int64(record[label_key])]
    for key in extras:
      value = record[key]
      if key == "file_name":
        out.append(value.encode() if isinstance(value, str) else bytes(value))
      else:  # the label set as a multi-hot row
        row = np.zeros(num_classes, np.uint8)
        row[np.asarray(value, np.int64)] = 1
        out.append(row)
    return tuple(out)

  def fetch(index):
    types = (tf.string, tf.int64) + tuple(extra_types[k][0] for k in extras)
    values = tf.numpy_function(read, [index], types, stateful=False)
    shapes = ((), ()) + tuple(extra_types[k][1] for k in extras)
    for value, shape in zip(values, shapes):
      value.set_shape(shape)
    out = {"image": values[0], "label": values[1], "id": tf.cast(index, tf.int64)}
    out.update(zip(extras, values[2:]))
    return out

  # The records are serialized tf.train.Examples (TFDS's array_record adapter); their
  # "image" feature holds the encoded bytes that SkipDecoding returns above.
  spec = builder.info.features.tf_example_spec
  spec = {"image": spec["image"], label_key: spec[label_key]}
  if "file_name" in extras:
    spec["file_name"] = tf.io.FixedLenFeature((), tf.string, default_value=b"")
  if "real_label" in extras:  # a variable-length list (TFDS's Sequence(ClassLabel))
    spec["real_label"] = tf.io.VarLenFeature(tf.int64)

  # A record that could not be read (past every retry: read_with_retries) stands in as an
  # empty image until the iterator stops the run (check_reads).
  unreadable = tf.train.Example(features=tf.train.Features(feature={
      "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b""])),
      label_key: tf.train.Feature(int64_list=tf.train.Int64List(value=[-1]))}))
  unreadable = unreadable.SerializeToString()
  failures: list[str] = []

  def reopen():
    opened[:] = open_sources()

  def read_raw(indices):
    indices = indices.tolist()
    records = read_with_retries(
        lambda: opened[1].__getitems__(indices),
        f"{len(indices)} records of {name}/{split} (indices {indices[0]}, ...)", failures,
        lambda: [unreadable] * len(indices), reopen)
    return np.array(records, dtype=object)

  def fetch_batch(indices):
    records = tf.numpy_function(read_raw, [indices], tf.string, stateful=False)
    records.set_shape(indices.shape)
    parsed = tf.io.parse_example(records, spec)
    out = {"image": parsed["image"], "label": tf.cast(parsed[label_key], tf.int64),
           "id": tf.cast(indices, tf.int64)}
    if "file_name" in extras:
      out["file_name"] = parsed["file_name"]
    if "real_label" in extras:
      out["real_label"] = tf.cast(tf.sparse.to_indicator(parsed["real_label"], num_classes),
                                  tf.uint8)
    return out

  return Source(name, split, num_examples, num_classes, channels, True, fetch,
                tuple(label_feature.names), fetch_batch=fetch_batch, read_batch=READ_BATCH,
                extras=tuple(extras), read_failures=failures)


# ---------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------

def _image_folder(root: str, split: str, extras: tuple[str, ...] = (),
                  class_order: str = "auto") -> Source:
  paths, labels, class_names = list_image_folder(root, split, class_order)
  unknown = sorted(set(extras) - {"file_name"})
  if unknown:
    raise DatasetError(f"image folder {root} has no per-example {', '.join(unknown)} (for ReaL "
                       "labels give the real.json file: evaluate --real_labels=PATH)")
  paths_t = tf.constant(paths)
  labels_t = tf.constant(labels, tf.int64)
  names_t = tf.constant([os.path.basename(p) for p in paths])

  def fetch(index):
    out = {"image": tf.io.read_file(tf.gather(paths_t, index)),
           "label": tf.gather(labels_t, index), "id": tf.cast(index, tf.int64)}
    if extras:
      out["file_name"] = tf.gather(names_t, index)
    return out

  return Source(f"imagefolder:{root}", split, len(paths), len(class_names), 3, True, fetch,
                tuple(class_names), np.asarray(labels, np.int64), extras=tuple(extras))
