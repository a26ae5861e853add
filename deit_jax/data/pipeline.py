"""tf.data train/eval pipelines of the DeiT recipe, sharded over hosts, exactly resumable.

Order of examples. The global batch of step ``s`` is a pure function of (seed, s), built
like the official RASampler (facebookresearch/deit, samplers.py) builds it over its GPUs:
epoch ``e = s // steps_per_epoch`` (with repeats, the official sampler's epoch length:
``steps_per_epoch``) walks a stateless random permutation of the split
(``tf.random.experimental.index_shuffle`` keyed by (seed, e)) in which every image is
repeated r times in a row (repeated augmentation x r; r = 1: no repeats); step s of the
epoch takes positions [s*B, (s+1)*B) of that list, whatever B (so an epoch covers 1/r of
the unique images, and an image's copies may straddle two steps, as in the official code).
The batch is laid out as G equal groups standing for the official run's G GPUs
(``batch_groups``): row i of group g takes list position s*B + g + G*i, as the official
replica g takes every G-th element, so an image's copies land in consecutive groups.
Process ``p`` of ``P`` materialises rows [p*B/P, (p+1)*B/P) of every global batch. Each
example's augmentation is seeded by its global position (seed, s*B + j). Consequences: the
same global batch whatever the host count, and resuming is "start at step s" -- the
iterator state is one integer.

Train transform (DeiT paper Table 9; the official repo's timm transforms):
RandomResizedCrop (JPEGs decode only the crop window) or, for small images, pad + random
crop; horizontal flip; RandAugment; normalise; random erasing. Mixup/CutMix run on
device in the train step (``data.mixup``).
Eval: resize to int(size / crop_pct) + centre crop (or identity for small images); the
last global batch is padded and carries ``mask`` so every example counts exactly once.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterator

import numpy as np
import tensorflow as tf

from deit_jax.data import randaugment, transforms
from deit_jax.data.sources import Source, check_reads
from deit_jax.errors import ConfigError

_INFINITE = 2 ** 62
_LOCATE_CHUNK = 1024  # positions per call of the index stream's map
# what tf.random.experimental.index_shuffle puts before a [2] seed (TF's stateless_random_ops)
_INDEX_SHUFFLE_PAD = 498247692


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Every knob of the train/eval transforms (defaults: the DeiT ImageNet recipe)."""

  image_size: int = 224
  crop: str = "rrc"                     # "rrc" (RandomResizedCrop) or "pad_crop" (small images)
  rrc_scale: tuple[float, float] = (0.08, 1.0)
  rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  pad: int = 4                          # pad_crop: zero padding before the random crop
  hflip: bool = True
  randaugment: str | None = "rand-m9-mstd0.5-inc1"
  random_erasing: float = 0.25
  repeated_aug: int = 3
  crop_pct: float = 0.875
  mean: tuple[float, ...] = transforms.IMAGENET_MEAN
  std: tuple[float, ...] = transforms.IMAGENET_STD
  in_chans: int = 3                     # 1: grayscale model input; 3: RGB (gray replicated)

  def __post_init__(self):
    if self.crop not in ("rrc", "pad_crop"):
      raise ConfigError(f"crop must be 'rrc' or 'pad_crop', got {self.crop!r}")
    if self.in_chans not in (1, 3):
      raise ConfigError(f"in_chans must be 1 or 3, got {self.in_chans}")
    if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
      raise ConfigError(f"mean/std need {self.in_chans} value(s) for in_chans={self.in_chans}, "
                       f"got {self.mean} / {self.std}")
    if self.repeated_aug < 1:
      raise ConfigError(f"repeated_aug must be >= 1, got {self.repeated_aug}")
    if self.randaugment:
      randaugment.RandAugmentConfig.from_string(self.randaugment)  # fail early on bad specs


@dataclasses.dataclass(frozen=True)
class HostSlice:
  """This process's slice of every global batch: rows [p*B/P, (p+1)*B/P); the batch is laid
  out as ``groups`` equal groups of rows (the official run's GPUs: module docstring)."""

  global_batch: int
  process_index: int = 0
  process_count: int = 1
  groups: int = 1

  def __post_init__(self):
    if self.global_batch % self.process_count:
      raise ConfigError(f"global batch {self.global_batch} is not divisible by the "
                       f"{self.process_count} processes")
    if self.groups < 1 or self.global_batch % self.groups:
      raise ConfigError(f"global batch {self.global_batch} does not split into batch_groups="
                        f"{self.groups} equal groups: use a divisor of the batch")

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count


Sharding = HostSlice  # the former name, until every caller says HostSlice

# The per-example augmentation seeds: ``augmentation_seeds(seed)[SEED_*]``. Teacher
# precompute draws crop-consistent views with the same slots, so they must not move.
SEED_CROP, SEED_FLIP, SEED_RANDAUGMENT, SEED_ERASING, SEED_VIEW_CHOICE = range(5)
_NUM_SEEDS = 5


def augmentation_seeds(seed) -> tf.Tensor:
  return tf.random.experimental.stateless_split(seed, _NUM_SEEDS)


# ---------------------------------------------------------------------------
# Per-example transforms
# ---------------------------------------------------------------------------

def _to_rgb(image):
  return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image


def _decode_full(image, source: Source):
  if source.encoded:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  return tf.cast(_to_rgb(image), tf.float32)


def _finish(image, config: AugmentConfig):
  """RGB float 0..255 -> model input: optional grayscale, then normalisation."""
  if config.in_chans == 1:
    image = tf.image.rgb_to_grayscale(image)
  return transforms.normalize(image, config.mean, config.std)


def _image_shape(image, source: Source):
  if not source.encoded:
    return tf.shape(image)[:2]
  return tf.cond(tf.io.is_jpeg(image), lambda: tf.image.extract_jpeg_shape(image)[:2],
                 lambda: tf.shape(_decode_full(image, source))[:2])


def sample_view(image, seeds, source: Source, config: AugmentConfig) -> tf.Tensor:
  """Draws the geometric part of the train transform (crop window + flip) as a view:
  int32 [top, left, height, width, flip], the crop window in the coordinates of the
  decoded image (rrc) or of the padded image (pad_crop), then the horizontal flip."""
  size = config.image_size
  if config.crop == "rrc":
    shape = _image_shape(image, source)
    window = transforms.random_resized_crop_window(shape[0], shape[1], seeds[SEED_CROP],
                                                   config.rrc_scale, config.rrc_ratio)
  else:
    offsets = tf.random.stateless_uniform((2,), seed=seeds[SEED_CROP], minval=0,
                                          maxval=2 * config.pad + 1, dtype=tf.int32)
    window = tf.concat([offsets, [size, size]], 0)
  flip = tf.random.stateless_uniform((), seed=seeds[SEED_FLIP]) < 0.5 if config.hflip else False
  return tf.concat([tf.cast(window, tf.int32), [tf.cast(flip, tf.int32)]], 0)


def apply_view(image, view, source: Source, config: AugmentConfig) -> tf.Tensor:
  """Crops ``view``'s window (JPEGs decode only that window), resizes it to the model's
  size and flips it: float32 RGB 0..255, size x size."""
  size = config.image_size
  top, left, height, width, flip = tf.unstack(tf.cast(view, tf.int32))
  if config.crop == "rrc":
    window = tf.stack([top, left, height, width])
    crop_full = lambda: _decode_full(image, source)[top:top + height, left:left + width]
    if source.encoded:
      crop = tf.cond(tf.io.is_jpeg(image),
                     lambda: tf.cast(tf.image.decode_and_crop_jpeg(image, window, channels=3),
                                     tf.float32),
                     crop_full)
    else:
      crop = crop_full()
    image = transforms.resize(crop, (size, size))
  else:
    image = _decode_full(image, source)
    if image.shape[0] != size or image.shape[1] != size:
      image = transforms.resize(image, (size, size))
    p = config.pad
    image = tf.pad(image, [[p, p], [p, p], [0, 0]])[top:top + size, left:left + size]
  image = tf.ensure_shape(image, (size, size, 3))
  return tf.cond(flip > 0, lambda: tf.reverse(image, axis=[1]), lambda: image)


def view_transform(example, view, source: Source, config: AugmentConfig):
  """A stored view without the photometric augmentations: what a teacher sees of it."""
  return _finish(apply_view(example["image"], view, source, config), config)


def photometric_transform(image, seeds, config: AugmentConfig):
  """What follows the geometry: RandAugment, normalisation, random erasing."""
  if config.randaugment:
    ra_config = randaugment.RandAugmentConfig.from_string(config.randaugment)
    image = randaugment.rand_augment(image, seeds[SEED_RANDAUGMENT], ra_config)
  image = _finish(image, config)
  if config.random_erasing > 0:
    image = transforms.random_erasing(image, seeds[SEED_ERASING], config.random_erasing)
  return image


def train_transform(example, seed, source: Source, config: AugmentConfig, views=None):
  """The train augmentation of one example; returns (image, view index).

  ``views`` (int32 [num_examples, K, 5], from crop-consistent teacher logits) replaces the
  random crop/flip by one of the example's K stored views, chosen by the seed; the view
  index (-1 without stored views) lets the host join the matching teacher logits.
  """
  seeds = augmentation_seeds(seed)
  if views is None:
    view, choice = sample_view(example["image"], seeds, source, config), tf.constant(-1)
  else:
    choice = tf.random.stateless_uniform((), seed=seeds[SEED_VIEW_CHOICE], minval=0,
                                         maxval=tf.shape(views)[1], dtype=tf.int32)
    view = tf.gather(views, example["id"])[choice]
  image = apply_view(example["image"], view, source, config)
  return photometric_transform(image, seeds, config), choice


# The fields of AugmentConfig that eval_transform reads (a teacher-logits manifest of the
# eval transform records only these).
EVAL_FIELDS = ("image_size", "crop", "crop_pct", "mean", "std", "in_chans")


def eval_transform(example, source: Source, config: AugmentConfig):
  image = _decode_full(example["image"], source)
  size = config.image_size
  if config.crop == "rrc":
    image = transforms.eval_resize_center_crop(image, size, config.crop_pct)
  elif image.shape[0] != size or image.shape[1] != size:
    image = transforms.resize(image, (size, size))
  return _finish(tf.ensure_shape(image, (size, size, 3)), config)


# ---------------------------------------------------------------------------
# Index streams
# ---------------------------------------------------------------------------

# The official RASampler (facebookresearch/deit samplers.py) hands each replica
# floor(floor(N / 256) * 256 / G) samples per epoch, whatever the repeat count.
RA_EPOCH_UNIT = 256


def steps_per_epoch(num_examples: int, global_batch: int, *, repeats: int = 1,
                    groups: int = 1) -> int:
  """Steps in an epoch. Without repeats: N // B (every image once, the last partial batch
  dropped). With repeated augmentation, the official run's count: its RASampler gives each
  of the G replicas floor(floor(N/256)*256/G) samples and the loader drops each replica's
  last partial batch of B/G, so an epoch is that // (B/G) steps. The two agree whenever
  256 divides B (every shipped config); otherwise the official epoch is shorter (N=1000,
  B=64, G=4: 12 steps, not 15)."""
  if repeats > 1:
    per_replica = num_examples // RA_EPOCH_UNIT * RA_EPOCH_UNIT // groups
    steps = per_replica // (global_batch // groups)
    if steps == 0:
      fix = ("a smaller --config.batch_size" if num_examples >= RA_EPOCH_UNIT else
             f"at least {RA_EPOCH_UNIT} examples")
      raise ConfigError(
          f"repeated augmentation (repeated_aug={repeats}) runs epochs of floor(N/256)*256 "
          f"examples like the official RASampler: {num_examples} examples leave "
          f"{per_replica} per group, less than one batch of {global_batch // groups}; use "
          f"--config.aug.repeated_aug=1 or {fix}")
    return steps
  steps = num_examples // global_batch
  if steps == 0:
    raise ConfigError(f"global batch {global_batch} is larger than the split "
                     f"({num_examples} examples)")
  return steps


def train_positions(num_examples: int, host: HostSlice, *, seed: int, repeats: int = 1,
                    start_step: int = 0) -> tf.data.Dataset:
  """(index, augmentation seed, local position) of this process's examples from
  ``start_step`` on; local position k belongs to step k // local_batch."""
  b, groups = host.global_batch, host.groups
  spe = steps_per_epoch(num_examples, b, repeats=repeats, groups=groups)
  local = host.local_batch
  offset = host.process_index * local

  def locate(k):  # a vector of local positions at a time: one op call per chunk
    step = k // local
    j = offset + k % local                       # row in the global batch
    group, row = j // (b // groups), j % (b // groups)
    epoch, within = step // spe, step % spe
    listed = within * b + group + groups * row   # position in the epoch's repeated list
    index = _index_shuffle(listed // repeats, seed, epoch, num_examples - 1)
    aug_seed = tf.stack([tf.fill(tf.shape(k), tf.constant(seed + 1, tf.int64)),
                         step * b + j], axis=1)
    return index, aug_seed, k

  return (tf.data.Dataset.range(start_step * local, _INFINITE).batch(_LOCATE_CHUNK)
          .map(locate).unbatch())


def _index_shuffle(positions, seed: int, epoch, max_index: int):
  """``tf.random.experimental.index_shuffle(position, [seed, epoch], max_index)`` for
  vectors of positions and epochs. (The public function pads a [n, 2] seed matrix along
  the wrong axis, so it accepts only one seed; the raw op takes [n, 3] seeds, and a [2]
  seed is the public function's pad constant followed by it.)"""
  pad = tf.fill(tf.shape(positions), tf.constant(_INDEX_SHUFFLE_PAD, tf.int64))
  seeds = tf.stack([pad, tf.fill(tf.shape(positions), tf.constant(seed, tf.int64)), epoch],
                   axis=1)
  return tf.raw_ops.RandomIndexShuffle(index=positions, seed=seeds,
                                       max_index=tf.constant(max_index, tf.int64), rounds=4)


def map_examples(ds: tf.data.Dataset, source: Source, fn) -> tf.data.Dataset:
  """(index, *rest) -> fn(example, *rest), element for element and in order.

  Sources with ``fetch_batch`` are read ``source.read_batch`` indices per call (one
  Python call per batch instead of per example: docs/performance.md#host-input), then
  unbatched; the others ``fetch`` each element inside ``fn``'s map.
  """
  parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if source.fetch_batch is None or source.read_batch <= 1:
    return ds.map(lambda index, *rest: fn(source.fetch(index), *rest), **parallel)
  ds = ds.batch(source.read_batch).map(
      lambda indices, *rest: (source.fetch_batch(indices), *rest), **parallel)
  return ds.unbatch().map(fn, **parallel)


def _options(threads: int | None = None):
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  if threads:  # a fixed budget (benchmarks); by default tf.data uses every core
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
  return options


def train_dataset(source: Source, config: AugmentConfig, host: HostSlice, *, seed: int,
                  start_step: int = 0, threads: int | None = None,
                  views=None) -> tf.data.Dataset:
  """Batches of {"image", "label", "id", "view", "position"} for this process, from
  ``start_step``; ``views`` as in ``train_transform``."""
  views = None if views is None else tf.constant(views, tf.int32)

  def element(example, aug_seed, position):
    # A record whose read failed past every retry comes with label -1 and skips the
    # transform (so it is not dropped like a corrupt image): the iterator stops the run
    # before its batch is used (sources.check_reads).
    size = config.image_size
    image, view = tf.cond(
        example["label"] >= 0,
        lambda: train_transform(example, aug_seed, source, config, views),
        lambda: (tf.zeros((size, size, config.in_chans), tf.float32), tf.constant(-1)))
    return {"image": image, "label": example["label"], "id": example["id"], "view": view,
            "position": position}

  ds = train_positions(source.num_examples, host, seed=seed, repeats=config.repeated_aug,
                       start_step=start_step)
  ds = map_examples(ds, source, element)
  if source.encoded:  # a corrupt file is dropped (and counted by TrainIterator)
    ds = ds.ignore_errors()
  ds = ds.batch(host.local_batch, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(threads))


def eval_dataset(source: Source, config: AugmentConfig, host: HostSlice) -> tf.data.Dataset:
  """Every example once over all processes: padded batches with a boolean ``mask`` (and the
  source's ``extras``, e.g. each example's file name, which travel with it)."""
  b, local = host.global_batch, host.local_batch
  num_batches = -(-source.num_examples // b)
  n = source.num_examples

  def locate(k):
    step, j = k // local, host.process_index * local + k % local
    position = step * b + j
    return tf.minimum(position, n - 1), position < n

  def element(example, valid):
    return {"image": eval_transform(example, source, config), "label": example["label"],
            "id": example["id"], "mask": valid, **{k: example[k] for k in source.extras}}

  ds = map_examples(tf.data.Dataset.range(num_batches * local).map(locate), source, element)
  return ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(
      _options())


class TrainIterator:
  """Host-side iterator over numpy batches with a one-integer, checkpointable state.

  ``state()`` is the next step; ``TrainIterator(..., start_step=state)`` continues the
  identical stream. Examples dropped because their file is corrupt are counted from gaps
  in the positions and reported with a warning (after such a drop, batches hold the next
  readable examples, so a resume replays exactly only on clean data).
  """

  def __init__(self, source: Source, config: AugmentConfig, host: HostSlice, *, seed: int,
               start_step: int = 0, views=None):
    self.source = source
    self.source_name = source.name
    self.next_step = start_step
    self.skipped = 0
    self._first_position = start_step * host.local_batch
    self._seen = 0
    self._iterator = train_dataset(source, config, host, seed=seed,
                                   start_step=start_step, views=views).as_numpy_iterator()

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    check_reads(self.source)  # a read that failed past every retry stops the run here
    positions = batch.pop("position")
    self._seen += len(positions)
    skipped = int(positions[-1]) + 1 - self._first_position - self._seen
    if skipped > self.skipped:
      self.skipped = skipped
      logging.warning("skipped %d unreadable image(s) so far in %s", skipped,
                      self.source_name)
    self.next_step += 1
    return batch

  def state(self) -> dict[str, int]:
    return {"step": self.next_step}
