"""Fashion-MNIST as a real TFDS dataset, built offline from Debian's idx files.

TFDS's stock ``fashion_mnist`` builder insists on downloading, even with the files in its
download folder. This builder keeps its name, version, features and example generator and
only replaces where the four idx ``.gz`` files come from: TFDS's manual-data directory,
by default ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist

from deit_jax.errors import MissingDataError

DEFAULT_MANUAL_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_data": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_data": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}


def missing_files(manual_dir: str) -> list[str]:
  return [os.path.join(manual_dir, f) for f in FILES.values()
          if not os.path.isfile(os.path.join(manual_dir, f))]


class FashionMNISTFromManualDir(mnist.FashionMNIST, skip_registration=True):
  """``fashion_mnist`` 3.0.1 whose split generators read ``dl_manager.manual_dir``."""

  name = "fashion_mnist"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Place {', '.join(FILES.values())} (the original Zalando idx files) in the manual "
      f"directory; on Debian: apt-get install dataset-fashion-mnist puts them in "
      f"{DEFAULT_MANUAL_DIR}.")

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    missing = missing_files(manual_dir)
    if missing:
      raise MissingDataError(f"Fashion-MNIST files missing: {', '.join(missing)} "
                              "(apt-get install dataset-fashion-mnist, or set manual_dir)")
    extracted = dl_manager.extract({k: os.path.join(manual_dir, v) for k, v in FILES.items()})
    return [
        tfds.core.SplitGenerator(
            name=split, gen_kwargs=dict(num_examples=count,
                                        data_path=extracted[f"{split}_data"],
                                        label_path=extracted[f"{split}_labels"]))
        for split, count in SPLIT_SIZES.items()
    ]


def builder(data_dir: str | None = None, manual_dir: str = DEFAULT_MANUAL_DIR,
            file_format: str | None = "array_record") -> FashionMNISTFromManualDir:
  """A prepared Fashion-MNIST builder (prepares it on first use, offline).

  ``array_record`` (the default) also allows random access (TFDS data sources).
  """
  ds_builder = FashionMNISTFromManualDir(data_dir=data_dir, file_format=file_format)
  if not ds_builder.is_prepared():
    missing = missing_files(manual_dir)
    if missing:
      raise MissingDataError(f"Fashion-MNIST is not prepared in {ds_builder.data_dir} and "
                              f"its source files are missing: {', '.join(missing)} "
                              "(apt-get install dataset-fashion-mnist, or pass manual_dir)")
    ds_builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return ds_builder
