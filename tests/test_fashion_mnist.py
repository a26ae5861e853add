"""The offline Fashion-MNIST TFDS builder (Debian's idx files)."""

import gzip
import os

import numpy as np
import pytest

from deit_jax.data import fashion_mnist


def test_missing_source_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz.*dataset-fashion-mnist"):
    fashion_mnist.builder(data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path))


def test_builds_real_tfds_dataset_offline(fmnist_data_dir):
  builder = fashion_mnist.builder(data_dir=fmnist_data_dir)
  assert builder.info.name == "fashion_mnist"
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 60000,
                                                                          "test": 10000}
  with gzip.open(os.path.join(fashion_mnist.DEFAULT_MANUAL_DIR,
                              "t10k-labels-idx1-ubyte.gz")) as f:
    labels = np.frombuffer(f.read()[8:], np.uint8)
  with gzip.open(os.path.join(fashion_mnist.DEFAULT_MANUAL_DIR,
                              "t10k-images-idx3-ubyte.gz")) as f:
    first_image = np.frombuffer(f.read()[16:16 + 784], np.uint8).reshape(28, 28, 1)
  test = builder.as_data_source(split="test")  # array_record: random access by index
  assert len(test) == 10000
  got = np.array([int(test[i]["label"]) for i in range(10000)])
  assert np.bincount(got).tolist() == np.bincount(labels).tolist()
  # TFDS keys examples by their index in the file, so the file's first image is in the split.
  images = {test[i]["image"].tobytes() for i in range(10000)}
  assert first_image.tobytes() in images
