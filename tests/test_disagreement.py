"""Disagreement matrix (the DeiT paper's Table 4): hand-computed counts, flag parsing,
outputs, and the command end to end on Fashion-MNIST with stored and model predictions."""

import csv
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from deit_jax import disagreement as dis, files
from deit_jax.cli import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Five real examples and one padded row (masked out; its values must not count).
LABELS = [0, 1, 2, 3, 4, 9]
MASK = [1, 1, 1, 1, 1, 0]
PREDICTIONS = [[0, 1, 2, 3, 0, 5],   # A: wrong on example 4
               [0, 1, 1, 3, 4, 7],   # B: wrong on example 2
               [1, 1, 1, 3, 0, 5]]   # C: wrong on examples 0, 2, 4
# By hand: A/B differ on 2 and 4, A/C on 0 and 2, B/C on 0 and 4.
EXPECTED = np.array([[0.0, 0.2, 0.2, 0.6],
                     [0.2, 0.0, 0.4, 0.4],
                     [0.2, 0.4, 0.0, 0.4],
                     [0.6, 0.4, 0.4, 0.0]])


def test_hand_computed_matrix_over_two_batches():
  p, y, m = np.array(PREDICTIONS), np.array(LABELS), np.array(MASK)
  first = dis.pairwise_counts(jnp.asarray(p[:, :3]), jnp.asarray(y[:3]), jnp.asarray(m[:3]))
  second = dis.pairwise_counts(jnp.asarray(p[:, 3:]), jnp.asarray(y[3:]), jnp.asarray(m[3:]))
  totals = {k: np.asarray(first[k]) + np.asarray(second[k]) for k in first}
  assert totals["count"] == 5
  np.testing.assert_allclose(dis.disagreement_fractions(totals), EXPECTED, atol=1e-7)


def test_entries_heads_and_bad_flags():
  entries = dis.parse_entries(["s=gs://b/run:dist", "t=/w/run", "u=/w/x:cls"], ["cnn=/l"])
  assert [(e.name, e.source, e.head) for e in entries] == [
      ("cnn", "/l", None), ("s", "gs://b/run", "dist"), ("t", "/w/run", "avg"),
      ("u", "/w/x", "cls")]
  for models, logits, message in [
      (["a=/x", "a=/y"], [], "unique.*a repeated"),
      (["groundtruth=/x"], ["b=/l"], "groundtruth"),
      (["/x:cls"], ["b=/l"], "--model=/x:cls: expected NAME=PATH"),
      (["a=/x"], [], "at least two")]:
    with pytest.raises(UserError, match=message):
      dis.parse_entries(models, logits)


@pytest.mark.parametrize("where", ["local", "ram://"])  # ram://: a gs://-like filesystem
def test_table_json_csv_and_png(tmp_path, where):
  names = ["groundtruth", "A", "B", "C"]
  result = {"names": names, "matrix": EXPECTED.tolist(), "dataset": "d", "split": "test",
            "top1": {"A": 80.0, "B": 80.0, "C": 40.0}, "num_examples": 5}
  table = dis.format_table(names, EXPECTED, "d/test", 5)
  assert table.splitlines()[-1].split() == ["C", "0.600", "0.400", "0.400", "0.000", "40.00"]
  out = str(tmp_path / "out") if where == "local" else "ram://disagreement/out"
  written = dis.write_outputs(out, result, plot=True)
  assert written == [files.join(out, f"disagreement.{s}") for s in ("json", "csv", "png")]
  rows = list(csv.reader(files.read_text(written[1]).splitlines()))
  assert rows[0] == ["", *names, "top1"] and rows[3][1:] == [
      "0.200000", "0.400000", "0.000000", "0.400000", "80.0000"]
  assert json.loads(files.read_text(written[0]))["matrix"] == EXPECTED.tolist()
  png = files.read_bytes(written[2])
  assert png.startswith(b"\x89PNG") and len(png) > 10_000


def _oracle_store(path, data_dir, shift=0):
  """Stored logits of the test split that predict (label + shift) % 10."""
  import tensorflow as tf

  from deit_jax.data import sources
  from deit_jax.teacher import store
  source = sources.open_source("fashion_mnist", "test", data_dir=data_dir)
  ids = np.arange(source.num_examples)
  labels = next(iter(tf.data.Dataset.from_tensor_slices(ids).map(source.fetch)
                     .batch(len(ids)).as_numpy_iterator()))["label"]
  logits = np.eye(10, dtype=np.float32)[(labels + shift) % 10] * 5
  path.mkdir()
  name = store.write_shard(str(path), ids, store.compress(logits, "full", 0))
  store.write_manifest(str(path), {
      "dataset": "fashion_mnist", "split": "test", "num_examples": len(ids),
      "num_classes": 10, "storage": "full", "k": 0, "views": 0,
      "teacher": {"name": "oracle"}, "shards": [name]})


def test_command_end_to_end(fmnist_data_dir, tmp_path):
  from deit_jax import checkpoint
  from deit_jax.models import create_model
  small = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16, depth=1,
               num_heads=2)
  for name, seed in (("deit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)):
    checkpoint.save_model(tmp_path / name, create_model(name, seed=seed, **small), name=name,
                          overrides=small)
  _oracle_store(tmp_path / "oracle", fmnist_data_dir)
  plain = tmp_path / "deit_tiny_patch16_224"
  distilled = tmp_path / "deit_tiny_distilled_patch16_224"
  command = [sys.executable, "-m", "deit_jax.disagreement",
             "--config=configs/fashion_mnist_deit_tiny.py",
             f"--config.data_dir={fmnist_data_dir}", "--config.batch_size=1000",
             "--cpu_devices=2", f"--logits=oracle={tmp_path / 'oracle'}",
             f"--model=plain={plain}:cls", f"--model=cls={distilled}:cls",
             f"--model=dist={distilled}:dist", f"--model=avg={distilled}",
             f"--out={tmp_path / 'out'}"]
  out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.load(open(tmp_path / "out" / "disagreement.json"))
  m = np.array(result["matrix"])
  assert result["names"] == ["groundtruth", "oracle", "plain", "cls", "dist", "avg"]
  assert result["num_examples"] == 10000
  np.testing.assert_allclose(m, m.T)
  assert np.all(np.diag(m) == 0) and m[0, 1] == 0  # the oracle is the ground truth
  np.testing.assert_allclose(m[1], m[0])           # so it disagrees with each as its error
  assert 0 < m[3, 4] and 0 < m[2, 5]               # random heads differ from each other
  assert "top-1 %" in out.stdout and os.path.exists(tmp_path / "out" / "disagreement.png")

  bad = subprocess.run(command[:-5] + [f"--model=d={plain}:dist"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith("error: --model=d:")
  assert "has no dist head" in bad.stderr
