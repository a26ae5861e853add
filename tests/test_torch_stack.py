"""PyTorch/timm after TensorFlow: the command lines that load both, each in a fresh process
(pytest's own process has imported torch first, which would hide the crash)."""

import os
import subprocess
import sys

import numpy as np

from conftest import image_folder, require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh(*args, timeout=600):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=env)


def test_timm_teacher_precompute_after_tensorflow(tmp_path):
  """The documented timm path: TFDS/TF opens the data first, then timm is imported."""
  require("timm")
  dataset = image_folder(tmp_path / "images")
  out = tmp_path / "logits"
  proc = _fresh("-m", "deit_jax.teacher", "precompute",
                "--config=configs/fashion_mnist_deit_tiny.py", f"--config.dataset={dataset}",
                "--config.num_classes=3", "--timm=resnet10t", "--split=test", f"--out={out}",
                "--batch_size=4")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  from deit_jax.teacher.store import TeacherLogits
  logits = TeacherLogits(str(out))
  assert logits.manifest["teacher"]["name"] == "timm:resnet10t"
  rows = logits.lookup(np.arange(12))
  assert rows.shape == (12, 3) and np.isfinite(rows).all() and not logits.missing


def test_import_timm_after_tensorflow_runs_a_model():
  """The helper itself, in the order that crashed (TensorFlow first)."""
  require("timm")
  proc = _fresh("-c", "import tensorflow as tf; tf.constant(1.0)\n"
                "from deit_jax.torch_stack import import_timm\n"
                "timm = import_timm(); import torch\n"
                "m = timm.create_model('resnet10t', num_classes=3).eval()\n"
                "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape))")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().endswith("(1, 3)")
