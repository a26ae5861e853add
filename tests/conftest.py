"""Shared test set-up: fp32 parity needs XLA's highest matmul precision."""

import fcntl
import importlib
import os

# The tests compute on the CPU. With libtpu installed (the tpu extra), JAX would otherwise
# try to open a TPU in every process and print libtpu's complaints on stderr, which tests
# of one-line errors read (the TPU compile check compiles for TPUs without opening one).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

# Importing the torch stack once, first, keeps the suite's memory and import time the same
# in any test order; deit_jax.torch_stack makes later imports safe after TensorFlow too
# (tests/test_torch_stack.py checks that in fresh processes, where this does not run).
try:
  from deit_jax.torch_stack import import_timm
  import_timm()
except ImportError:
  pass


SLOW = os.environ.get("DEIT_JAX_SLOW") == "1"


# The modules that take longest (minutes of subprocesses each), longest first. Under
# `pytest -n 2 --dist loadscope` a worker takes whole modules in collection order (xdist's
# own order, most tests first, started the 4-minute rehearsal last: the other worker then
# idled for minutes); these first, the rest after, is how both workers finish together.
LONGEST_FIRST = ("test_rehearsal", "test_elastic", "test_main", "test_teacher", "test_chain",
                 "test_storage_faults",
                 "test_train_step", "test_pod_compile", "test_export", "test_benchmark",
                 "test_configs")


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the collection order
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  """The longest modules first (LONGEST_FIRST). Tests marked ``slow`` (minutes each,
  covered in the suite by a cheaper sibling) run only with DEIT_JAX_SLOW=1:
  ``DEIT_JAX_SLOW=1 .venv/bin/python -m pytest -m slow``."""
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order kept
  if SLOW:
    return
  skip = pytest.mark.skip(reason="slow: DEIT_JAX_SLOW=1 pytest -m slow runs it")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


def require(module: str):
  """Imports an optional test dependency (torch, timm): skipped locally when missing, but
  in CI (CI=true) its absence fails the run, so parity can never silently go untested."""
  if os.environ.get("CI", "").lower() == "true":
    return importlib.import_module(module)
  return pytest.importorskip(module)


@pytest.fixture(scope="session")
def fmnist_data_dir(tmp_path_factory):
  """A TFDS data dir with Fashion-MNIST prepared from Debian's files, once per session: the
  pytest-xdist workers share it (the first prepares it, ~20 s, the others wait)."""
  from deit_jax.data import fashion_mnist
  if fashion_mnist.missing_files(fashion_mnist.DEFAULT_MANUAL_DIR) and \
      os.environ.get("CI", "").lower() != "true":
    pytest.skip("apt-get install dataset-fashion-mnist")
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's folder, above each worker's own
  data_dir = root / "tfds_fashion_mnist"
  with open(root / "tfds_fashion_mnist.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not (data_dir / "prepared").exists():
      fashion_mnist.builder(str(data_dir))
      (data_dir / "prepared").write_text("")
  return str(data_dir)


def image_folder(root) -> str:
  """A tiny ``imagefolder:`` dataset: 3 classes of 28x28 grey PNGs (bright top / bright
  left / dark), 16 train + 4 test images each."""
  import numpy as np
  import tensorflow as tf
  rng = np.random.RandomState(0)
  for split, count in (("train", 16), ("test", 4)):
    for c, name in enumerate(("top", "left", "dark")):
      os.makedirs(root / split / name)
      for i in range(count):
        image = rng.randint(0, 60, (28, 28, 1)).astype(np.uint8)
        if c == 0:
          image[:10] += 150
        elif c == 1:
          image[:, :10] += 150
        (root / split / name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
  return f"imagefolder:{root}"


def free_port() -> int:
  """A free TCP port on loopback (a coordinator's, a test server's)."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]

