"""Dataset subsets: exactly the requested classes (relabelled) and examples per class,
the same on every call, and one clear error for a request the data cannot meet."""

import numpy as np
import pytest
import tensorflow as tf

from deit_jax.data import sources, subset


@pytest.fixture(scope="module")
def test_split(fmnist_data_dir):
  return sources.open_source("fashion_mnist", "test", data_dir=fmnist_data_dir)


def _read(source, indices):
  ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64)).map(source.fetch)
  return list(ds.as_numpy_iterator())


def test_classes_and_counts_are_exactly_the_requested_ones(test_split):
  picked = subset.select(test_split, classes=subset.parse_classes("7,Trouser,0"), per_class=25,
                         seed=3)
  assert picked.num_classes == 3 and picked.num_examples == 75
  assert picked.class_names == ("Sneaker", "Trouser", "T-shirt/top")
  assert np.bincount(picked.labels).tolist() == [25, 25, 25]
  examples = _read(picked, range(picked.num_examples))
  assert [int(e["id"]) for e in examples] == list(range(75))
  assert [int(e["label"]) for e in examples] == picked.labels.tolist()
  # Each kept example is the original image of its class, relabelled 7 -> 0, 1 -> 1, 0 -> 2.
  original = {7: 0, 1: 1, 0: 2}
  images = {e["image"].tobytes(): int(e["label"]) for e in examples}
  full = _read(test_split, np.flatnonzero(np.isin(test_split.labels, [0, 1, 7])))
  matched = [original[int(e["label"])] for e in full if e["image"].tobytes() in images]
  assert len(matched) >= 75 and all(images[e["image"].tobytes()] == original[int(e["label"])]
                                    for e in full if e["image"].tobytes() in images)
  # Deterministic: the same selection on every call; another seed draws other examples.
  again = subset.select(test_split, classes=("7", "1", "0"), per_class=25, seed=3)
  assert again.name == picked.name and np.array_equal(again.labels, picked.labels)
  other = subset.select(test_split, classes=("7", "1", "0"), per_class=25, seed=4)
  assert other.name != picked.name
  assert [e["image"].tobytes() for e in _read(other, range(75))] != \
      [e["image"].tobytes() for e in examples]


def test_whole_classes_and_no_selection(test_split):
  assert subset.select(test_split) is test_split
  half = subset.select(test_split, classes=("5", "6", "7", "8", "9"))
  assert half.num_examples == 5000 and np.bincount(half.labels).tolist() == [1000] * 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes=("Jumper",)), "has no class 'Jumper'"),
    (dict(classes=("10",)), "has no class 10"),
    (dict(classes=("3", "3")), "listed twice"),
    (dict(per_class=1001), "1001 examples per class, but class 'T-shirt/top'"),
])
def test_impossible_requests_are_errors(test_split, kwargs, message):
  with pytest.raises(sources.DatasetError, match=message):
    subset.select(test_split, **kwargs)


def test_labels_of_a_random_access_source_are_read_in_order(fmnist_data_dir, test_split):
  random_access = sources.open_source("fashion_mnist", "test", data_dir=fmnist_data_dir,
                                      in_memory_limit_bytes=0)
  assert random_access.labels is None and random_access.read_batch > 1
  np.testing.assert_array_equal(subset.labels_of(random_access), test_split.labels)
