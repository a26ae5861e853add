"""Shared test set-up: fp32 parity needs XLA's highest matmul precision."""

import importlib
import os

# The tests compute on the CPU. With libtpu installed (the tpu extra), JAX would otherwise
# try to open a TPU in every process and print libtpu's complaints on stderr, which tests
# of one-line errors read (the TPU compile check compiles for TPUs without opening one).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

# torchvision (via triton) segfaults when it is first imported after TensorFlow has loaded
# its shared libraries; importing the torch stack first, once, avoids that in any test order.
for _module in ("torch", "torchvision", "timm"):
  try:
    importlib.import_module(_module)
  except ImportError:
    pass


def require(module: str):
  """Imports an optional test dependency (torch, timm): skipped locally when missing, but
  in CI (CI=true) its absence fails the run, so parity can never silently go untested."""
  if os.environ.get("CI", "").lower() == "true":
    return importlib.import_module(module)
  return pytest.importorskip(module)


@pytest.fixture(scope="session")
def fmnist_data_dir(tmp_path_factory):
  """A TFDS data dir with Fashion-MNIST prepared from Debian's files (once per session)."""
  from deit_jax.data import fashion_mnist
  if fashion_mnist.missing_files(fashion_mnist.DEFAULT_MANUAL_DIR) and \
      os.environ.get("CI", "").lower() != "true":
    pytest.skip("apt-get install dataset-fashion-mnist")
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  fashion_mnist.builder(data_dir)
  return data_dir
