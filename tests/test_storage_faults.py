"""Storage faults on the pod path, through the GCS stand-in, on two processes: transient
faults leave every batch bitwise equal to a fault-free run's; a fault that outlasts every
retry stops each process with one line and keeps the last checkpoint; a record that reads
but does not decode costs only itself and is counted."""

import json
import os
import subprocess
import sys

import pytest
from conftest import free_port

from deit_jax import checkpoint
from deit_jax.bench.gcs_standin import Fault, StandIn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORRUPT = 7  # the image truncated before the dataset is built


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  """48 JPEGs (one truncated) as a TFDS array_record dataset in a stand-in bucket."""
  from deit_jax.bench.bucket_io import copy_tree
  from deit_jax.bench.input_pipeline import make_array_record_dataset, make_image_folder
  root = tmp_path_factory.mktemp("faults")
  make_image_folder(str(root), 48, size=(32, 32))
  victim = root / "train" / "photos" / f"{CORRUPT:05d}.jpg"
  victim.write_bytes(victim.read_bytes()[:200])
  make_array_record_dataset(str(root), str(root / "tfds"), num_classes=4)
  with StandIn(str(root / "standin")) as standin:
    copy_tree(str(root / "tfds"), standin, "tfds")
    yield standin, "gs://deit-bench/tfds"


def _env(standin):
  return {**os.environ, **standin.environ(), "DEIT_JAX_READ_BACKOFF_S": "0.2"}


def _read(standin, data_dir, tmp_path, name, steps=3):
  outs = [tmp_path / f"{name}.{i}.json" for i in range(2)]
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "storage_worker.py"),
                             data_dir, str(i), "2", str(steps), str(out)], env=_env(standin),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i, out in enumerate(outs)]
  results = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-3000:]
  return [json.loads(out.read_text()) for out in outs]


def test_transient_faults_leave_batches_bitwise_equal(bucket, tmp_path):
  """503s and connection resets (array_record's client retries them) and a 403 (it does
  not: ours retries) on the record reads: the same batches, bit for bit; the corrupt JPEG
  is dropped and counted in both runs alike."""
  standin, data_dir = bucket
  clean = _read(standin, data_dir, tmp_path, "clean")
  standin.configure(faults=[Fault("503", match="array_record", limit=2),
                            Fault("reset", match="array_record", limit=2, after_bytes=3000),
                            Fault("403", match="array_record", limit=1)])
  faulty = _read(standin, data_dir, tmp_path, "faulty")
  fired = [f.fired for f in standin.faults]
  standin.configure(faults=[])
  assert fired == [2, 2, 1]
  assert [r["digests"] for r in faulty] == [r["digests"] for r in clean]
  assert sum(r["skipped"] for r in clean) == 1  # one epoch: the corrupt JPEG, once
  assert [r["skipped"] for r in faulty] == [r["skipped"] for r in clean]


def test_persistent_fault_stops_every_process_with_one_line(bucket, tmp_path):
  """A run saves steps 1-2; its resume meets a 403 on every record read (past every
  retry): both processes stop with one line, and the checkpoints stay."""
  standin, data_dir = bucket
  workdir = tmp_path / "run"

  def train(total_steps, processes):
    command = [sys.executable, "-m", "deit_jax.main", f"--workdir={workdir}",
               "--config=configs/fashion_mnist_deit_tiny.py",
               "--config.dataset=deit_jax_bench_jpegs", f"--config.data_dir={data_dir}",
               "--config.eval_split=train", "--config.num_classes=4",
               "--config.model.img_size=32",
               "--config.model.in_chans=3", "--config.model.depth=1",
               "--config.model.embed_dim=32", "--config.model.num_heads=2",
               "--config.aug.image_size=32", "--config.aug.in_chans=3",
               "--config.aug.mean=(0.5,0.5,0.5)", "--config.aug.std=(0.25,0.25,0.25)",
               "--config.batch_size=16", f"--config.total_steps={total_steps}",
               "--config.checkpoint_every_steps=1", "--config.eval_every_steps=-1"]
    if processes > 1:
      command += [f"--coordinator_address=127.0.0.1:{free_port()}",
                  f"--num_processes={processes}"]
    procs = [subprocess.Popen(command + ([f"--process_id={i}"] if processes > 1 else []),
                              cwd=ROOT, env=_env(standin), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(processes)]
    return [(p, *p.communicate(timeout=300)) for p in procs]

  for p, _, err in train(2, processes=1):  # steps 1-2 (resumed below on 2 processes)
    assert p.returncode == 0, err[-3000:]
  metrics = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  assert metrics["step"] == 2 and metrics["input_skipped"] in (0, 1)  # the corrupt JPEG
  standin.configure(faults=[Fault("403", match="array_record")])  # every record read
  results = train(4, processes=2)
  standin.configure(faults=[])
  for p, _, err in results:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert p.returncode == 2, err[-3000:]
    assert len(errors) == 1 and "failed 3 times, each after the storage client retries" \
        in errors[0] and "the last checkpoint is kept" in errors[0], err[-3000:]
    assert "Traceback" not in err
  assert checkpoint.committed_steps(str(workdir / "checkpoints")) == [1, 2]


_LIST = """
import json, sys
from deit_jax.data.image_folder import list_image_folder
from deit_jax.errors import StorageError
try:
  paths, labels, names = list_image_folder(sys.argv[1], "train")
  print(json.dumps({"names": names, "images": len(paths)}))
except StorageError as e:
  print(json.dumps({"error": str(e)}))
"""


def test_a_class_folder_that_fails_to_list_is_never_dropped(bucket, tmp_path):
  """tf.io.gfile.isdir answers False to any error, so a fault on one class folder used to
  drop that class silently. A 503 (the client retries it) gives the same classes; a 403
  on that folder stops with one StorageError instead of a list without it."""
  from PIL import Image

  from deit_jax.bench.bucket_io import copy_tree
  standin, _ = bucket
  for name in ("ant", "bee", "cat"):
    (tmp_path / "folder" / "train" / name).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "folder" / "train" / name / "0.jpg")
  copy_tree(str(tmp_path / "folder"), standin, "classes")

  def listing(*faults):
    standin.configure(faults=list(faults))
    out = subprocess.run([sys.executable, "-c", _LIST, "gs://deit-bench/classes"],
                         env=_env(standin), capture_output=True, text=True, timeout=300)
    fired = [f.fired for f in standin.faults]
    standin.configure(faults=[])
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1]), fired

  whole = {"names": ["ant", "bee", "cat"], "images": 3}
  assert listing(Fault("503", match="bee", limit=1)) == (whole, [1])
  result, fired = listing(Fault("403", match="bee"))
  assert fired[0] >= 1 and "error" in result, result
  assert result["error"].startswith("listing gs://deit-bench/classes/train/bee") \
      and "may be incomplete" in result["error"] and "\n" not in result["error"]
