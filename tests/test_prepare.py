"""``deit_jax.data.prepare`` (build locally, copy, verify; restartable), the refusal of
array_record preparations on non-local data dirs, and one process preparing for all."""

import os
import threading
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from deit_jax.data import fashion_mnist, prepare, sources

NAME = "deit_prepare_tiny"


class DeitPrepareTiny(tfds.core.GeneratorBasedBuilder):
  """12 train + 6 test 8x8 grey images in 3 classes, built offline in about a second."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(12), "test": self._generate_examples(6)}

  def _generate_examples(self, count):
    for i in range(count):
      yield i, {"image": np.full((8, 8, 1), 10 * i, np.uint8), "label": i % 3}


@pytest.fixture
def builds(monkeypatch):
  """Names of the threads that ran a TFDS build of the tiny dataset, in order."""
  calls, real = [], DeitPrepareTiny.download_and_prepare

  def spy(self, *args, **kwargs):
    calls.append(threading.current_thread().name)
    return real(self, *args, **kwargs)

  monkeypatch.setattr(DeitPrepareTiny, "download_and_prepare", spy)
  return calls


@pytest.fixture(scope="module")
def local_build(tmp_path_factory):
  """A local TFDS data dir with the tiny dataset built (array_record), shared read-only."""
  local = str(tmp_path_factory.mktemp("local"))
  prepare.prepare(NAME, data_dir=local, say=lambda _: None)
  return local


def _variant(root):
  return os.path.join(root, NAME, "1.0.0")


def test_build_copy_verify_then_rerun_is_a_one_line_no_op(tmp_path, builds):
  local, bucket, lines = str(tmp_path / "local"), str(tmp_path / "bucket"), []
  out = prepare.prepare(NAME, data_dir=bucket, local_dir=local, say=lines.append)
  assert out == _variant(bucket) and builds == ["MainThread"]
  assert lines[0].startswith("disk: ") and lines[1].startswith(f"building {NAME}/1.0.0")
  assert lines[-2].startswith("copied 4 files") and lines[-1].startswith("verified: ")
  assert sorted(os.listdir(out)) == sorted(os.listdir(_variant(local)))
  source = sources.open_source(NAME, "train", data_dir=bucket)  # what a run does
  assert (source.num_examples, source.num_classes) == (12, 3)
  assert sorted(source.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4

  again = []
  prepare.prepare(NAME, data_dir=bucket, local_dir=local, say=again.append)
  assert again == [f"{NAME}/1.0.0 (array_record) is already complete in {out}: nothing to do"]
  # A new bucket: the local build is reused, not rebuilt.
  other, lines = str(tmp_path / "other"), []
  prepare.prepare(NAME, data_dir=other, local_dir=local, say=lines.append)
  assert builds == ["MainThread"] and "is already built in" in lines[0]
  assert lines[1].startswith("copied 4 files")


def test_an_interrupted_copy_is_finished_by_a_rerun(tmp_path, local_build, monkeypatch):
  bucket, real_copy, done = str(tmp_path / "bucket"), tf.io.gfile.copy, []

  def copy_two_then_fail(src, dst, overwrite=False):
    if len(done) == 2:
      raise OSError("connection reset")
    real_copy(src, dst, overwrite=overwrite)
    done.append(dst)

  monkeypatch.setattr(tf.io.gfile, "copy", copy_two_then_fail)
  with pytest.raises(OSError, match="connection reset"):
    prepare.prepare(NAME, data_dir=bucket, local_dir=local_build, copy_threads=1,
                    say=lambda _: None)
  assert not sources.tfds_builder(NAME, bucket).is_prepared()  # info file goes last
  assert not any(d.endswith(prepare.INFO_FILE) for d in done)
  with open(done[0].rsplit(".partial-", 1)[0], "r+b") as f:  # a file cut short somehow
    f.truncate(3)
  monkeypatch.setattr(tf.io.gfile, "copy", real_copy)
  lines = []
  prepare.prepare(NAME, data_dir=bucket, local_dir=local_build, say=lines.append)
  assert lines[1].startswith("copied 3 files") and lines[1].endswith(", 1 already there")
  assert sources.tfds_builder(NAME, bucket).is_prepared()


def test_the_copy_goes_through_gfile_to_a_non_local_file_system(local_build):
  files = prepare.dataset_files(sources.tfds_builder(NAME, local_build))
  assert files[-1] == os.path.join(NAME, "1.0.0", prepare.INFO_FILE) and len(files) == 4
  dest = "ram://bucket/tfds"
  assert prepare.copy_dataset(files, local_build, dest)[:2] == (4, 0)
  for f in files:
    assert tf.io.gfile.stat(f"{dest}/{f}").length == os.path.getsize(f"{local_build}/{f}")
  assert prepare.copy_dataset(files, local_build, dest) == (0, 4, 0)


def test_fashion_mnist_is_copied_and_verified(fmnist_data_dir, tmp_path):
  lines = []
  prepare.prepare("fashion_mnist", data_dir=str(tmp_path), local_dir=fmnist_data_dir,
                  say=lines.append)
  assert "fashion_mnist/3.0.1 (array_record) is already built" in lines[0]
  assert "train 60,000" in lines[-1] and "test 10,000" in lines[-1]
  assert sources.open_source("fashion_mnist", "test", data_dir=str(tmp_path)).num_examples \
      == 10_000


def test_array_record_to_gs_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sources, "tfds_builder", None)  # no TFDS call may happen
  code = prepare.main(["--dataset=imagenet2012", "--manual_dir=/data/imagenet",
                       "--data_dir=gs://bucket/tensorflow_datasets"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1
  assert err.startswith("error: array_record files cannot be written to gs://bucket/")
  assert "--local_dir=" in err and "google/array_record#120" in err
  assert prepare.main(["--dataset=cifar10", "--local_dir=gs://bucket/tfds"]) == 2
  assert "must be a directory on this machine" in capsys.readouterr().err


def _unprepared_on_gcs(*args, **kwargs):
  return types.SimpleNamespace(
      data_dir_root="gs://bucket/tfds", data_dir="gs://bucket/tfds/cifar10/3.0.2",
      info=types.SimpleNamespace(file_format=tfds.core.FileFormat.ARRAY_RECORD),
      is_prepared=lambda: False, download_and_prepare=None)  # calling it would fail


def test_a_run_refuses_to_prepare_array_record_on_gs(monkeypatch):
  """What main/evaluate/teacher meet through config_glue.open_split, before any work."""
  monkeypatch.setattr(sources.tfds, "builder", _unprepared_on_gcs)
  with pytest.raises(sources.DatasetError) as info:
    sources.open_source("cifar10", "train", data_dir="gs://bucket/tfds")
  message = str(info.value)
  assert "\n" not in message and "tensorflow/datasets#10981" in message
  assert ("python -m deit_jax.data.prepare --dataset=cifar10 --data_dir=gs://bucket/tfds "
          "--local_dir=") in message


def test_file_format_mismatch_and_bad_value(tmp_path, capsys):
  local = str(tmp_path)
  prepare.prepare(NAME, data_dir=local, file_format="tfrecord", say=lambda _: None)
  with pytest.raises(sources.DatasetError, match="prepared as tfrecord, not array_record: "
                     "pass --file_format=tfrecord"):
    prepare.prepare(NAME, data_dir=local, say=lambda _: None)
  assert prepare.main([f"--dataset={NAME}", "--file_format=parquet"]) == 2
  assert "--file_format" in capsys.readouterr().err


def test_too_little_local_disk_is_refused(tmp_path, monkeypatch):
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "train.tar").write_bytes(b"x" * 5000)
  builder = sources.tfds_builder(NAME, str(tmp_path / "local"))
  assert prepare.needed_bytes(builder, str(tmp_path / "manual"))[0] == 5000
  monkeypatch.setattr(prepare.shutil, "disk_usage", lambda _: types.SimpleNamespace(free=4000))
  with pytest.raises(sources.DatasetError, match="not enough disk .* about 0.0 GB needed"):
    prepare.check_disk(builder, str(tmp_path / "local"), str(tmp_path / "manual"))


class _Agree:
  """``agree`` of sources.prepare_once for threads standing in for processes."""

  def __init__(self, count):
    self.barrier, self.first_ok = threading.Barrier(count), None

  def __call__(self, index, ok):
    if index == 0:
      self.first_ok = ok
    self.barrier.wait(timeout=120)
    return self.first_ok


def _as_processes(count, body):
  """Runs ``body(index, agree)`` in ``count`` threads; returns {index: result or error}."""
  agree, out = _Agree(count), {}

  def run(index):
    try:
      out[index] = body(index, lambda ok: agree(index, ok))
    except Exception as e:  # the test reads each "process"'s error
      out[index] = e

  threads = [threading.Thread(target=run, args=(i,), name=f"process{i}") for i in range(count)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=300)
  return out


def test_process_0_prepares_while_the_others_wait(tmp_path, builds):
  def body(index, agree):
    sources.prepare_once(NAME, data_dir=str(tmp_path), first=index == 0, agree=agree)
    return sources.open_source(NAME, "train", data_dir=str(tmp_path)).num_examples

  assert _as_processes(3, body) == {0: 12, 1: 12, 2: 12}
  assert builds == ["process0"]  # nobody else built it, before or after the barrier


def test_a_failure_of_process_0_reaches_every_process(tmp_path):
  def body(index, agree):
    sources.prepare_once("fashion_mnist", data_dir=str(tmp_path / "d"),
                         manual_dir=str(tmp_path), first=index == 0, agree=agree)

  out = _as_processes(2, body)
  assert isinstance(out[0], FileNotFoundError) and fashion_mnist.FILES["test_data"] in str(out[0])
  assert isinstance(out[1], sources.DatasetError) and "process 0 failed" in str(out[1])


def test_stage_copies_from_the_bucket_resumes_and_refuses_too_little_space(
    local_build, tmp_path, monkeypatch, capsys):
  """``deit_jax.data.stage``: the prepared dataset from a bucket (the GCS stand-in, through
  tf.io.gfile) to a local dir, checked to open with the same counts; a re-run after an
  interruption copies only what is missing, a complete one does nothing; a storage fault
  past the client's retries and too little space are one line each."""
  from deit_jax.bench.bucket_io import copy_tree
  from deit_jax.bench.gcs_standin import Fault, StandIn
  from deit_jax.data import stage
  with StandIn() as standin:
    copy_tree(local_build, standin, "tfds")
    standin.activate()
    bucket = "gs://deit-bench/tfds"
    local = str(tmp_path / "staged")
    lines = []
    stage.stage(NAME, data_dir=bucket, local_dir=local, say=lines.append)
    assert lines[0].startswith("staged ") and f"--config.data_dir={local}" in lines[-1]
    source = sources.open_source(NAME, "train", data_dir=local)
    assert source.num_examples == 12
    shard = next(f for f in os.listdir(_variant(local)) if "train.array_record" in f)
    os.remove(os.path.join(_variant(local), shard))  # an interrupted staging
    os.remove(os.path.join(_variant(local), prepare.INFO_FILE))
    lines.clear()
    stage.stage(NAME, data_dir=bucket, local_dir=local, say=lines.append)
    assert lines[0].startswith("staged 2 files") and "already there" in lines[0]
    stage.stage(NAME, data_dir=bucket, local_dir=local, say=lines.append)
    assert lines[-1].endswith("is already staged in " + _variant(local) + ": nothing to do")
    standin.configure(faults=[Fault("403", match="train.array_record")])  # a lasting fault
    assert stage.main([f"--dataset={NAME}", f"--data_dir={bucket}",
                       f"--local_dir={tmp_path / 'faulty'}"]) == 2
    assert "failed past the storage client retries (PermissionDeniedError" in \
        capsys.readouterr().err
    standin.configure(faults=[])
    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=10))
    assert stage.main([f"--dataset={NAME}", f"--data_dir={bucket}",
                       f"--local_dir={tmp_path / 'other'}"]) == 2
    assert not (tmp_path / "other").exists()
    assert capsys.readouterr().err.startswith(f"error: not enough space to stage {NAME} in ")
