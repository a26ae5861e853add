"""Input pipeline: sources, layouts over hosts, augmentation statistics, exact resume."""

import dataclasses
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from deit_jax.data import pipeline, sources, subset
from deit_jax.errors import ConfigError

FMNIST = dict(image_size=28, crop="pad_crop", pad=2, mean=(0.286,), std=(0.353,), in_chans=1)


@pytest.fixture(scope="module")
def fmnist_train(fmnist_data_dir):
  return sources.open_source("fashion_mnist", "train", data_dir=fmnist_data_dir)


@pytest.fixture(scope="module")
def fmnist_test(fmnist_data_dir):
  return sources.open_source("fashion_mnist", "test", data_dir=fmnist_data_dir)


def _texture(h, w, seed):
  rng = np.random.RandomState(seed)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  img = np.stack([np.sin(xx / rng.uniform(3, 9) + c) * 80 + yy / h * 60 + 60 for c in range(3)],
                 -1)
  return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  """<root>/{train,val}/<class>/ with JPEGs and PNGs of assorted sizes, and one gray image."""
  root = tmp_path_factory.mktemp("folder")
  k = 0
  for split, per_class in (("train", 6), ("val", 3)):
    for cls in ("cat", "dog", "emu"):
      os.makedirs(root / split / cls)
      for i in range(per_class):
        image = _texture(150 + 17 * i, 200 - 11 * i, k)
        encode = tf.io.encode_png if i % 3 == 2 else tf.io.encode_jpeg
        if split == "val" and i == 0 and cls == "emu":
          image = image[..., :1]  # grayscale file
        ext = "png" if i % 3 == 2 else "jpg"
        tf.io.write_file(str(root / split / cls / f"{i:03d}.{ext}"), encode(image))
        k += 1
  return str(root)


def _collect(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_fashion_mnist_batches_shapes_and_ranges(fmnist_train):
  assert (fmnist_train.num_examples, fmnist_train.num_classes) == (60000, 10)
  config = pipeline.AugmentConfig(**FMNIST, randaugment=None, repeated_aug=1,
                                  random_erasing=0.0)
  batch = next(pipeline.TrainIterator(fmnist_train, config, pipeline.HostSlice(64), seed=0))
  assert batch["image"].shape == (64, 28, 28, 1) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int64 and batch["label"].max() < 10
  assert -1.0 < batch["image"].min() < -0.7 and 1.5 < batch["image"].max() < 2.1
  rgb = pipeline.AugmentConfig(**{**FMNIST, "in_chans": 3, "mean": (0.286,) * 3,
                                  "std": (0.353,) * 3})
  batch = next(pipeline.TrainIterator(fmnist_train, rgb, pipeline.HostSlice(60), seed=0))
  assert batch["image"].shape == (60, 28, 28, 3)


def test_epoch_is_a_permutation(fmnist_test):
  config = pipeline.AugmentConfig(**FMNIST, randaugment=None, random_erasing=0.0,
                                  repeated_aug=1)
  ids = np.concatenate([b["id"] for b in _collect(
      pipeline.TrainIterator(fmnist_test, config, pipeline.HostSlice(1000), seed=3), 10)])
  assert len(np.unique(ids)) == 10000
  next_epoch = next(pipeline.TrainIterator(fmnist_test, config, pipeline.HostSlice(1000), seed=3,
                                           start_step=10))["id"]
  assert not np.array_equal(next_epoch, ids[:1000])  # a fresh permutation per epoch


def test_repeated_augmentation_layout(fmnist_test):
  config = pipeline.AugmentConfig(**FMNIST, repeated_aug=3)
  host = pipeline.HostSlice(96, groups=3)  # three "GPUs": each holds one copy of 32 images
  batch = next(pipeline.TrainIterator(fmnist_test, config, host, seed=0))
  ids, images = batch["id"].reshape(3, 32), batch["image"].reshape(3, 32, -1)
  assert (ids == ids[0]).all() and len(np.unique(ids[0])) == 32
  assert not np.allclose(images[0], images[1])  # independent augmentations of each copy
  steps = pipeline.steps_per_epoch(10000, 96, repeats=3, groups=3)
  seen = np.concatenate([b["id"][:32] for b in _collect(
      pipeline.TrainIterator(fmnist_test, config, host, seed=0), steps)])
  assert len(np.unique(seen)) == steps * 32  # an epoch covers ~1/3 of the unique images


def _official_ra_steps(n, seed, epochs, *, batch, groups, repeats):
  """Every global batch of ``epochs`` epochs as the official run deals them, written from
  the official RASampler (facebookresearch/deit samplers.py) and a drop_last DataLoader on
  each of ``groups`` replicas, with no use of our own epoch length: per epoch, the
  permutation with every index repeated ``repeats`` times in a row, padded to a multiple
  of the replicas; replica g takes every groups-th element from g and keeps the first
  floor(floor(n/256)*256/groups); its loader cuts batches of batch/groups and drops the
  last partial one. Step t's global batch is the replicas' t-th batches, one after another."""
  per_replica = batch // groups
  steps = []
  for epoch in range(epochs):
    perm = tf.random.experimental.index_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.constant([seed, epoch], tf.int64),
        max_index=n - 1).numpy().tolist()
    repeated = [i for i in perm for _ in range(repeats)]
    total = -(-n * repeats // groups) * groups
    repeated += repeated[:total - len(repeated)]
    selected = int(np.floor(n // 256 * 256 / groups))
    replicas = [repeated[g:total:groups][:selected] for g in range(groups)]
    for t in range(selected // per_replica):
      steps.append(np.concatenate([r[t * per_replica:(t + 1) * per_replica]
                                   for r in replicas]))
  return steps


@pytest.mark.parametrize("n,batch,groups,repeats", [
    (1000, 64, 4, 3),    # 256 does not divide the batch: 12 steps an epoch, not 1000 // 64 = 15
    (700, 48, 3, 3),     # 3 groups do not divide 512 either
    (600, 20, 2, 2),
    (300, 256, 4, 3)])   # 256 divides the batch: the official count is N // B
def test_repeated_augmentation_deals_like_the_official_sampler(n, batch, groups, repeats):
  """Two processes' rows of every step over three epochs are the official sampler's
  replicas' batches, laid out replica after replica; the epochs end where its do."""
  seed = 3
  expected = _official_ra_steps(n, seed, 3, batch=batch, groups=groups, repeats=repeats)
  assert pipeline.steps_per_epoch(n, batch, repeats=repeats, groups=groups) * 3 == len(expected)
  rows = []
  for p in range(2):
    host = pipeline.HostSlice(batch, p, 2, groups)
    stream = pipeline.train_positions(n, host, seed=seed, repeats=repeats)
    local = np.array([int(i) for i, _, _ in stream.take(host.local_batch * len(expected))
                      .as_numpy_iterator()]).reshape(len(expected), host.local_batch)
    rows.append(local)
  for step, want in enumerate(expected):
    np.testing.assert_array_equal(np.concatenate([rows[0][step], rows[1][step]]), want,
                                  err_msg=f"step {step}")


def test_global_batch_is_independent_of_process_count(fmnist_test):
  config = pipeline.AugmentConfig(**FMNIST)
  single = _collect(pipeline.TrainIterator(fmnist_test, config, pipeline.HostSlice(48), seed=1),
                    3)
  parts = [_collect(pipeline.TrainIterator(fmnist_test, config,
                                           pipeline.HostSlice(48, p, 2), seed=1), 3)
           for p in range(2)]
  for step in range(3):
    for key in ("image", "label", "id"):
      np.testing.assert_array_equal(
          single[step][key], np.concatenate([parts[0][step][key], parts[1][step][key]]))


def test_exact_resume(fmnist_train):
  config = pipeline.AugmentConfig(**{**FMNIST, "in_chans": 3, "mean": (0.286,) * 3,
                                     "std": (0.353,) * 3})
  straight = _collect(pipeline.TrainIterator(fmnist_train, config, pipeline.HostSlice(30),
                                             seed=7), 6)
  first = pipeline.TrainIterator(fmnist_train, config, pipeline.HostSlice(30), seed=7)
  _collect(first, 4)
  state = first.state()
  assert state == {"step": 4}
  resumed = _collect(pipeline.TrainIterator(fmnist_train, config, pipeline.HostSlice(30),
                                            seed=7, start_step=state["step"]), 2)
  for a, b in zip(straight[4:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("processes", [1, 2])
def test_eval_counts_every_example_once(fmnist_test, processes):
  config = pipeline.AugmentConfig(**FMNIST)
  ids, labels = [], []
  for p in range(processes):
    for batch in pipeline.eval_dataset(fmnist_test, config,
                                       pipeline.HostSlice(768, p, processes)).as_numpy_iterator():
      assert batch["image"].shape == (768 // processes, 28, 28, 1)
      ids.append(batch["id"][batch["mask"]])
      labels.append(batch["label"][batch["mask"]])
  ids = np.concatenate(ids)
  assert len(ids) == 10000 and len(np.unique(ids)) == 10000
  assert np.bincount(np.concatenate(labels)).tolist() == [1000] * 10


def test_flip_statistics(image_folder):
  source = sources.open_source(f"imagefolder:{image_folder}", "train")
  asymmetric = {"image": tf.io.encode_png(np.tile(np.arange(64, dtype=np.uint8)[None, :, None],
                                                  (64, 1, 3)))}
  config = pipeline.AugmentConfig(image_size=64, crop="pad_crop", pad=0, randaugment=None,
                                  random_erasing=0.0)
  outputs = [pipeline.train_transform(asymmetric, tf.constant([i, 9], tf.int64), source,
                                      config)[0].numpy() for i in range(400)]
  flipped = [out[0, 0, 0] > out[0, -1, 0] for out in outputs]
  assert np.mean(flipped) == pytest.approx(0.5, abs=0.07)


def test_image_folder_full_recipe(image_folder):
  source = sources.open_source(f"imagefolder:{image_folder}", "train")
  assert (source.num_examples, source.num_classes) == (18, 3)
  assert source.class_names == ("cat", "dog", "emu")
  # RRC + flip + RandAugment + erasing (no repeats: the official sampler's epoch needs 256
  # images, tests/test_pipeline.py's sampler tests cover them)
  config = pipeline.AugmentConfig(image_size=64, repeated_aug=1)
  batch = next(pipeline.TrainIterator(source, config, pipeline.HostSlice(12), seed=0))
  assert batch["image"].shape == (12, 64, 64, 3) and np.isfinite(batch["image"]).all()
  val = sources.open_source(f"imagefolder:{image_folder}", "val")
  ds = pipeline.eval_dataset(val, pipeline.AugmentConfig(image_size=64), pipeline.HostSlice(4))
  masks = [b["mask"] for b in ds.as_numpy_iterator()]
  assert sum(m.sum() for m in masks) == 9


def test_corrupt_image_is_skipped_and_counted(image_folder, tmp_path, caplog):
  import shutil
  root = tmp_path / "copy"
  shutil.copytree(image_folder, root)
  victim = root / "train" / "dog" / "001.jpg"
  victim.write_bytes(victim.read_bytes()[:300])  # truncated JPEG
  (root / "train" / "cat" / "000.jpg").write_bytes(b"not an image at all")
  source = sources.open_source(f"imagefolder:{root}", "train")
  config = pipeline.AugmentConfig(image_size=32, repeated_aug=1)
  iterator = pipeline.TrainIterator(source, config, pipeline.HostSlice(6), seed=0)
  with caplog.at_level(logging.WARNING):
    batches = _collect(iterator, 6)
  assert all(b["image"].shape == (6, 32, 32, 3) for b in batches)
  assert iterator.skipped >= 2 and "unreadable image" in caplog.text


@pytest.mark.parametrize("dataset, split, message", [
    ("fashion_mnistt", "train", "unknown dataset 'fashion_mnistt'"),
    ("fashion_mnist", "validation", "has no split 'validation'"),
])
def test_bad_dataset_names(fmnist_data_dir, dataset, split, message):
  with pytest.raises(sources.DatasetError, match=message):
    sources.open_source(dataset, split, data_dir=fmnist_data_dir)


def test_image_folder_errors(tmp_path):
  with pytest.raises(sources.DatasetError, match="does not exist"):
    sources.open_source(f"imagefolder:{tmp_path}/nope", "train")
  (tmp_path / "train" / "a").mkdir(parents=True)
  (tmp_path / "train" / "a" / "notes.txt").write_text("x")
  with pytest.raises(sources.DatasetError, match="holds no images"):
    sources.open_source(f"imagefolder:{tmp_path}", "train")
  with pytest.raises(sources.DatasetError, match="has no split 'val'.*found: train"):
    sources.open_source(f"imagefolder:{tmp_path}", "val")
  for i in range(300):  # a crowded folder (a shared /tmp): the error names a few, and counts
    (tmp_path / f"run_{i:03d}").mkdir()
  with pytest.raises(sources.DatasetError) as error:
    sources.open_source(f"imagefolder:{tmp_path}", "val")
  assert "found: run_000, run_001, " in str(error.value) and "(301 in all)" in str(error.value)
  assert len(str(error.value)) < 300


def test_numbered_split_beside_a_train_folder_reads_its_own_classes(tmp_path):
  """ImageNet-V2's folders 0, 1, ... unpacked beside a train/ of synset folders: labelled
  by their own numbers, not looked up among train's names."""
  png = tf.io.encode_png(tf.zeros((8, 8, 1), tf.uint8)).numpy()
  for split, classes in (("train", ("n01440764", "n01443537")), ("v2", ("0", "1", "2"))):
    for cls in classes:
      (tmp_path / split / cls).mkdir(parents=True)
      (tmp_path / split / cls / "a.png").write_bytes(png)
  paths, labels, names = sources.list_image_folder(str(tmp_path), "v2")
  assert labels == [0, 1, 2] and names == ["0", "1", "2"]
  assert sources.list_image_folder(str(tmp_path), "train")[2] == ["n01440764", "n01443537"]


def test_missing_manual_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
    sources.open_source("fashion_mnist", "train", data_dir=str(tmp_path / "d"),
                        manual_dir=str(tmp_path))


def test_bad_augment_configs():
  with pytest.raises(ValueError, match="mean/std need 1 value"):
    pipeline.AugmentConfig(in_chans=1)
  with pytest.raises(ValueError, match="bad RandAugment spec"):
    pipeline.AugmentConfig(randaugment="rand-x")
  with pytest.raises(ValueError, match="does not split into batch_groups=3"):
    pipeline.HostSlice(10, groups=3)
  with pytest.raises(ValueError, match="larger than the split"):
    pipeline.train_positions(5, pipeline.HostSlice(9), seed=0)
  with pytest.raises(ConfigError, match="repeated_aug=1 or at least 256 examples"):
    pipeline.train_positions(255, pipeline.HostSlice(9), seed=0, repeats=3)
  assert pipeline.steps_per_epoch(255, 9) == 28  # without repeats: every image once


def test_index_stream_is_the_documented_permutation():
  """Each epoch visits a seeded permutation of the split (TF's stateless index_shuffle keyed
  by (seed, epoch)); with two groups and two repeats an image's copies sit global_batch/2
  apart; every element has its own augmentation seed. Checked element by element against
  the public scalar function across an epoch boundary, for the second of two processes."""
  n, seed, repeats = 300, 7, 2
  host = pipeline.HostSlice(24, process_index=1, process_count=2, groups=2)
  spe = pipeline.steps_per_epoch(n, 24, repeats=repeats, groups=2)  # 10: (256 / 2) // 12
  stream = list(pipeline.train_positions(n, host, seed=seed, repeats=repeats,
                                         start_step=spe - 1)
                .take(3 * host.local_batch).as_numpy_iterator())
  for index, aug_seed, k in stream:
    step, j = k // 12, 12 + k % 12
    epoch, unique = step // spe, (step % spe) * 12 + j % 12
    expected = tf.random.experimental.index_shuffle(
        tf.constant(unique, tf.int64), seed=tf.constant([seed, epoch], tf.int64), max_index=n - 1)
    assert index == int(expected)
    assert list(aug_seed) == [seed + 1, step * 24 + j]
  first = (spe - 1) * 12
  assert [k for _, _, k in stream] == list(range(first, first + 36))
  # a step's 12 rows here are 12 images; their second copies are process 0's rows
  assert len({int(i) for i, _, k in stream if k < first + 12}) == 12


def test_random_access_source_equals_in_memory(fmnist_data_dir):
  in_memory = sources.open_source("fashion_mnist", "test", data_dir=fmnist_data_dir)
  random_access = sources.open_source("fashion_mnist", "test", data_dir=fmnist_data_dir,
                                      in_memory_limit_bytes=0)
  assert random_access.encoded and not in_memory.encoded
  config = pipeline.AugmentConfig(**FMNIST)
  a = next(pipeline.eval_dataset(in_memory, config, pipeline.HostSlice(50)).as_numpy_iterator())
  b = next(pipeline.eval_dataset(random_access, config,
                                 pipeline.HostSlice(50)).as_numpy_iterator())
  for key in ("image", "label", "id"):
    np.testing.assert_array_equal(a[key], b[key])


def _read_stream(source, count):
  """The first ``count`` (example, position) of a train index stream, read as training
  reads them (``map_examples``), undecoded."""
  ds = pipeline.train_positions(source.num_examples, pipeline.HostSlice(12), seed=5, repeats=3)
  ds = pipeline.map_examples(ds, source, lambda example, unused_seed, position: (example,
                                                                                  position))
  return list(ds.take(count).as_numpy_iterator())


def test_batched_reads_equal_per_record_reads(fmnist_data_dir):
  random_access = sources.open_source("fashion_mnist", "test", data_dir=fmnist_data_dir,
                                      in_memory_limit_bytes=0)
  assert random_access.fetch_batch is not None and random_access.read_batch > 1
  batched = dataclasses.replace(random_access, read_batch=7)  # read batches straddle steps
  per_record = dataclasses.replace(random_access, fetch_batch=None)
  picked = subset.select(batched, classes=("7", "1"), per_class=130, seed=0)  # 256 for x3
  picked_per_record = dataclasses.replace(picked, fetch_batch=None)
  for a_source, b_source in ((batched, per_record), (picked, picked_per_record)):
    a, b = _read_stream(a_source, 40), _read_stream(b_source, 40)
    assert [p for _, p in a] == [p for _, p in b] == list(range(40))
    for (a_example, _), (b_example, _) in zip(a, b):
      assert a_example.keys() == b_example.keys() == {"image", "label", "id"}
      for key in a_example:
        assert a_example[key] == b_example[key]
  assert {int(e["label"]) for e, _ in _read_stream(picked, 40)} == {0, 1}
  # ... and the decoded, augmented train batches are identical too.
  config = pipeline.AugmentConfig(**FMNIST)
  a, b = (next(pipeline.train_dataset(s, config, pipeline.HostSlice(24), seed=1)
               .as_numpy_iterator()) for s in (batched, per_record))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


class _FailingRecord:
  """A TFDS data source whose record ``bad`` fails to read ``fails[0]`` more times (a
  storage fault past the client's own retries; the count is shared by the sources opened
  again after a failure), then reads."""

  def __init__(self, inner, bad, fails):
    self.inner, self.bad, self.fails = inner, bad, fails

  def __len__(self):
    return len(self.inner)

  def _check(self, indices):
    if self.bad in indices and self.fails[0] > 0:
      self.fails[0] -= 1
      raise OSError("503 Service Unavailable")

  def __getitem__(self, index):
    self._check([index])
    return self.inner[index]

  def __getitems__(self, indices):
    self._check(indices)
    return self.inner.__getitems__(indices)


def test_a_read_error_is_retried_to_the_same_batches_or_stops(fmnist_data_dir, monkeypatch,
                                                               caplog):
  """A read that fails is tried again with the same indices: the batches equal a fault-free
  run's, bit for bit. One that fails every try stops the iteration with StorageError before
  a batch without its examples is used (it never turns into a dropped example)."""
  from deit_jax.errors import StorageError
  monkeypatch.setattr(sources, "READ_BACKOFF_S", 0.01)
  builder = sources._tfds_builder("fashion_mnist", fmnist_data_dir, None)
  host = pipeline.HostSlice(12)
  bad = int(next(iter(pipeline.train_positions(10_000, host, seed=1).skip(5)))[0])
  real = builder.as_data_source
  config = pipeline.AugmentConfig(**FMNIST, repeated_aug=1)

  def failing_source(fails, read_batch):
    fails = [fails]
    monkeypatch.setattr(builder, "as_data_source",
                        lambda *a, **k: _FailingRecord(real(*a, **k), bad, fails))
    return dataclasses.replace(sources.from_builder(builder, "test", in_memory_limit_bytes=0),
                               read_batch=read_batch)

  def batches(fails, read_batch):
    iterator = pipeline.TrainIterator(failing_source(fails, read_batch), config, host, seed=1)
    return _collect(iterator, 3), iterator

  clean, _ = batches(0, 8)
  for read_batch in (8, 1):  # batched reads, and the per-record path
    with caplog.at_level(logging.WARNING):
      retried, iterator = batches(sources.READ_TRIES - 1, read_batch)
    assert iterator.skipped == 0
    for a, b in zip(clean, retried):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert "failed (OSError: 503 Service Unavailable); trying again" in caplog.text
    with pytest.raises(StorageError, match="failed 3 times, each after the storage client "
                                           "retries .OSError: 503 Service Unavailable"):
      batches(sources.READ_TRIES, read_batch)
  # A pass of evaluation (or of the teacher precompute) stops with the same error.
  source = failing_source(10 ** 6, 8)
  evaluation = pipeline.eval_dataset(source, config, pipeline.HostSlice(12))
  with pytest.raises(StorageError, match="failed 3 times"):
    for _ in sources.checked(evaluation.as_numpy_iterator(), source):
      pass


def test_tfrecord_preparation_is_refused_for_random_access(fmnist_data_dir, tmp_path):
  from deit_jax.data import fashion_mnist
  fashion_mnist.builder(str(tmp_path), file_format="tfrecord")
  with pytest.raises(sources.DatasetError, match="array_record"):
    sources.open_source("fashion_mnist", "test", data_dir=str(tmp_path),
                        in_memory_limit_bytes=0)
  # Held in memory, it is the same split as the array_record preparation's.
  tfrecord = sources.open_source("fashion_mnist", "test", data_dir=str(tmp_path))
  array_record = sources.open_source("fashion_mnist", "test", data_dir=fmnist_data_dir)
  np.testing.assert_array_equal(tfrecord.labels, array_record.labels)
  for index in (0, 4321, 9999):
    np.testing.assert_array_equal(tfrecord.fetch(index)["image"],
                                  array_record.fetch(index)["image"])


def test_imagenet_without_manual_files_is_one_clear_error(tmp_path):
  with pytest.raises(sources.DatasetError) as info:
    sources.open_source("imagenet2012", "train", data_dir=str(tmp_path / "tfds"),
                        manual_dir=str(tmp_path / "manual"))
  assert "ILSVRC2012_img_train.tar" in str(info.value) and "\n" not in str(info.value)
