"""gs://-style workdirs: every reader takes committed checkpoint steps only, and outputs,
logs and teacher logits go through deit_jax.files, exercised on TensorFlow's in-memory
``ram://`` filesystem (a ``scheme://`` path like ``gs://``, read the gs:// way).

orbax itself cannot write or restore ``ram://`` (its array I/O is TensorStore's), so the
checkpoints are written locally; the step choice is checked on ``ram://`` copies, and the
restores on a local copy read with the gs:// rule."""

import errno
import json
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from deit_jax import checkpoint, cli, config_glue, files
from deit_jax.errors import NotACheckpointError, OutputExistsError, StorageError
from deit_jax.models import create_model
from deit_jax.teacher import store

NAME = "deit_tiny_patch16_224"
SMALL = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=5)


def _copy(local, remote):
  """Copies a local tree to a ``scheme://`` path through the file layer."""
  for root, _, names in os.walk(local):
    target = files.join(remote, os.path.relpath(root, local)).rstrip("/.")
    files.makedirs(target)
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        files.write_bytes(files.join(target, name), f.read())


def _in_progress(step_dir, model="deit_small_patch16_224"):
  """A step directory as orbax leaves it on gs:// while writing it: no commit file (and
  contents that would fail loudly if anything read them)."""
  files.write_text(files.join(step_dir, "state", "_METADATA"), "not yet")
  files.write_text(files.join(step_dir, "meta", "metadata"), json.dumps({"model": model}))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny training workdir with committed steps 1 and 2 (orbax, local)."""
  workdir = tmp_path_factory.mktemp("files") / "run"
  _, params, rest = nnx.split(create_model(NAME, seed=0, **SMALL), nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  saver = checkpoint.TrainCheckpoints(workdir, every_steps=1, keep=3)
  meta = {"model": NAME, "model_config": SMALL, "num_classes": 5, "dataset": "x"}
  for step in (1, 2):  # the part of a train state that readers restore
    params = jax.tree.map(lambda p: p + 0.01, params)
    saver.save(step, {"params": params, "rest": rest}, {"step": step}, meta)
  saver.close()
  return workdir


def test_committed_steps_are_orbax_finalized_steps(run, tmp_path):
  work = tmp_path / "w"
  shutil.copytree(run, work)
  os.makedirs(work / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000" / "state")
  directory = str(work / "checkpoints")
  assert checkpoint.committed_steps(directory) == [1, 2]
  assert sorted(ocp.path.step.checkpoint_steps(directory)) == [1, 2]  # orbax's own listing
  # orbax finishes a step with the commit file here too, so the gs:// rule accepts them;
  # on gs:// the commit file is all that tells a finished step.
  assert all((work / "checkpoints" / s / checkpoint.COMMIT_FILE).exists() for s in "12")
  gcs = ocp.path.atomicity_defaults.get_default_temporary_path_class(epath.Path("gs://b/c"))
  assert gcs is ocp.path.atomicity.CommitFileTemporaryPath


def test_readers_on_a_gcs_style_filesystem(run):
  work = "ram://readers/run"
  _copy(str(run / "checkpoints" / "2"), f"{work}/checkpoints/2")
  _in_progress(f"{work}/checkpoints/5")  # written in place, no commit file yet
  files.makedirs(f"{work}/checkpoints/7.orbax-checkpoint-tmp-1700000000/state")
  assert checkpoint.committed_steps(f"{work}/checkpoints") == [2]
  assert checkpoint._train_checkpoint_step(work) == (f"{work}/checkpoints", 2)
  with pytest.raises(NotACheckpointError, match="not committed.*latest committed step is 2"):
    checkpoint._train_checkpoint_step(f"{work}/checkpoints/5")

  # Only steps being written: one line, whichever reader asks.
  _in_progress("ram://readers/fresh/checkpoints/10")
  with pytest.raises(NotACheckpointError, match="no committed checkpoint step yet") as e:
    checkpoint.load_trained_model("ram://readers/fresh")
  assert "\n" not in str(e.value) and "10" in str(e.value)
  _in_progress(f"{work}/best/20")
  with pytest.raises(NotACheckpointError, match="no committed checkpoint step yet"):
    checkpoint.best_directory(work)
  _copy(str(run / "checkpoints" / "1"), f"{work}/best/1")
  assert checkpoint.best_directory(work) == f"{work}/best"
  assert checkpoint._train_checkpoint_step(f"{work}/best") == (f"{work}/best", 1)
  with pytest.raises(NotACheckpointError, match="neither a training workdir"):
    checkpoint.load_trained_model("ram://readers/nothing")


@pytest.fixture
def gcs_style(run, tmp_path, monkeypatch):
  """A local copy of the run read the gs:// way, with step 9 being written (no commit
  file) beside the committed steps."""
  monkeypatch.setattr(checkpoint, "_commit_file_required", lambda step_dir: True)
  work = tmp_path / "w"
  shutil.copytree(run, work)
  _in_progress(str(work / "checkpoints" / "9"))
  return work


def test_loaders_take_the_latest_committed_step(gcs_style):
  # load_model_for is what evaluate --checkpoint, teacher precompute, the online teacher
  # and disagreement --model read through; load_trained_model also serves init_from.
  model, info = config_glue.load_model_for(ConfigDict({"num_classes": 5}), str(gcs_style))
  assert info["step"] == 2 and info["name"] == NAME
  explicit, _ = checkpoint.load_trained_model(gcs_style / "checkpoints" / "2")
  np.testing.assert_array_equal(model.cls_token[...], explicit.cls_token[...])


def test_export_writes_to_a_scheme_path(gcs_style, monkeypatch, tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  from deit_jax import export
  monkeypatch.chdir(tmp_path)
  out = "ram://export/deit.safetensors"
  name, kwargs = export.export(str(gcs_style), out)
  data = files.read_bytes(out)
  tensors = safetensors_numpy.load(data)
  model, _ = checkpoint.load_trained_model(gcs_style / "checkpoints" / "2")
  expected = export.state_dict(model)
  assert sorted(tensors) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(tensors[key], value)
  assert name == NAME and kwargs["num_classes"] == 5
  assert not os.path.exists("ram:")  # nothing written to a local ./ram:/ folder
  with pytest.raises(OutputExistsError):
    export.export(str(gcs_style), out)


def _last_line_becomes(path, text, timeout=10.0):
  deadline = time.time() + timeout
  while not (files.exists(path) and files.read_text(path).splitlines()[-1].endswith(text)):
    assert time.time() < deadline, f"{path} did not end with {text!r} in {timeout} s"
    time.sleep(0.05)


def test_log_file_is_current_within_the_interval(monkeypatch):
  """A scheme:// log is uploaded in the background within files.REMOTE_INTERVAL_S of a
  line (the GCS stand-in's test measures that no line waits: test_gcs_standin)."""
  monkeypatch.setattr(files, "REMOTE_INTERVAL_S", 0.2)
  path = "ram://logs/run/train.log"
  with cli.log_file(path):
    cli.say("step 10/40  loss 2.3")
    _last_line_becomes(path, "  step 10/40  loss 2.3")
    cli.say("step 20/40  loss 2.1")
    _last_line_becomes(path, "  step 20/40  loss 2.1")
  with pytest.raises(RuntimeError), cli.log_file(path):  # a resumed run appends
    cli.say("step 30/40  loss 2.0")
    raise RuntimeError("lost the slice")
  lines = [line.split("  ", 1)[1] for line in files.read_text(path).splitlines()]
  assert [line.startswith("--- ") for line in lines] == [True, False, False, True, False,
                                                          False]
  assert lines[-2:] == ["step 30/40  loss 2.0", "stopped by RuntimeError: lost the slice"]
  cli.say("after the run")  # no log open: stdout only
  assert "after the run" not in files.read_text(path)


def test_teacher_logits_store_round_trip():
  path = "ram://teacher/logits"
  ids = np.arange(6)
  logits = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
  shards = [store.write_shard(path, ids[:3], store.compress(logits[:3], "full", 0)),
            store.write_shard(path, ids[3:], store.compress(logits[3:], "full", 0))]
  store.write_manifest(path, {"dataset": "d", "split": "test", "num_examples": 6,
                              "num_classes": 4, "storage": "full", "views": 0,
                              "shards": shards})
  assert files.listdir(path) == sorted([*shards, store.MANIFEST])  # no temporary names left
  loaded = store.TeacherLogits(path)
  np.testing.assert_array_equal(loaded.lookup(ids[::-1]), logits[::-1].astype(np.float16))


def test_a_storage_fault_is_one_line_not_a_missing_folder(tmp_path, monkeypatch):
  """os.path.isdir (and tf.io.gfile.isdir) answer False to any error: an EIO on a mounted
  bucket would drop checkpoint step 2 and pick step 1 without a word. files.isdir and
  files.listdir answer False or FileNotFoundError only for what is not there."""
  for step in (1, 2):
    (tmp_path / "checkpoints" / str(step) / "state").mkdir(parents=True)
  faulty = str(tmp_path / "checkpoints" / "2" / "state")
  real_stat, real_listdir = os.stat, os.listdir

  def stat(path, *args, **kwargs):
    if os.fspath(path) == faulty:
      raise OSError(errno.EIO, "Input/output error", path)
    return real_stat(path, *args, **kwargs)

  def listdir(path="."):
    if os.fspath(path) == faulty:
      raise OSError(errno.EIO, "Input/output error", path)
    return real_listdir(path)

  assert checkpoint.committed_steps(str(tmp_path / "checkpoints")) == [1, 2]
  monkeypatch.setattr(os, "stat", stat)
  monkeypatch.setattr(os, "listdir", listdir)
  assert files.isdir(tmp_path / "checkpoints") and not files.isdir(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError):
    files.listdir(tmp_path / "nothing")
  for call in (lambda: checkpoint.committed_steps(str(tmp_path / "checkpoints")),
               lambda: files.listdir(faulty)):
    with pytest.raises(StorageError, match=r"^listing .*/2/state failed after the storage "
                                           r"client retries \(OSError: .*Input/output error"):
      call()
