"""The pod rehearsal (launch/rehearse_pod.py) in its smaller form: every documented stage of
the pod path on 2 processes x 2 CPU devices, with a smaller batch, student (1 block) and
teacher (the rehearsal proper: docs/launch.md, "Rehearse the pod path"), with the bucket on
the local GCS stand-in: every gs:// path goes through its real client (tf.io.gfile,
array_record, tensorstore, google-cloud-storage), the trainer's workdir included."""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pod_path_rehearsal_smaller_form(tmp_path):
  # DeiT-Ti's width, 1 of its 12 blocks; no repeats: 16 images give the official sampler no
  # epoch (it needs 256), the full rehearsal's 1,100 keep the recipe's x3
  smaller = ["batch_size=16", "model.depth=1", "aug.repeated_aug=1"]
  command = [sys.executable, os.path.join(ROOT, "launch", "rehearse_pod.py"),
             f"--work={tmp_path}", "--classes=2", "--per_class=8", "--val=4",
             "--processes=2", "--devices=2", "--steps=2", "--grad_accum=2",
             "--teacher=regnety_002", "--teacher_batch=8", "--signal_after=0",
             "--no-fit_check",  # stage 0: tests/test_pod_compile.py compiles the recipe
             "--bucket=standin",
             *[f"--smaller={kv}" for kv in smaller]]
  run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
  out = run.stdout + run.stderr
  assert run.returncode == 0, out[-4000:]
  # SIGTERM reached process 1 only; both stopped at step 1 with one checkpoint, the same
  # command resumed there and finished.
  assert re.search(r"SIGTERM to process 1 after \d+ s: every process stopped at step 1, "
                   r"one checkpoint", out), out[-3000:]
  assert "(resumed at step 1, finished step 2)" in out
  # The bucket (the stand-in's objects; nothing went to a local folder instead) holds the
  # prepared dataset, the teacher's logits over the 16 training images, the run's committed
  # checkpoints and the export.
  from deit_jax.bench.gcs_standin import Objects
  objects = Objects(str(tmp_path / "standin" / "objects"))
  bucket = "deit-rehearsal"
  names = objects.names(bucket)
  assert not (tmp_path / "bucket").exists()
  manifest = json.loads(objects.read(objects.stat(
      bucket, "teacher_logits/regnety160/manifest.json")))
  assert (manifest["dataset"], manifest["split"], manifest["num_examples"]) == (
      "imagenet2012", "train", 16)
  assert any(n.startswith("tensorflow_datasets/imagenet2012/") and ".array_record-" in n
             for n in names)
  for step in (1, 2):
    assert f"runs/deit_tiny/checkpoints/{step}/commit_success.txt" in names
  assert "runs/deit_tiny/train.log" in names
  assert objects.stat(bucket, "export/deit_tiny.safetensors").size > 0
  assert json.loads((tmp_path / "evaluate.json").read_text())["num_examples"] == 4
  # Each client's requests reached the stand-in in the stages that use it.
  requests = json.loads((tmp_path / "standin_requests.json").read_text())
  used = {stage.split()[0]: {c for c, n in clients.items() if n.get("requests")}
          for stage, clients in requests.items()}
  assert "tensorflow" in used["2"]  # prepare's copy into the bucket
  assert {"array_record", "tensorstore", "google-cloud-storage", "tensorflow"} <= used["4"]
  assert {"array_record", "tensorstore"} <= used["5"] and "tensorflow" in used["2b"]
  assert "6" in used and "array_record" not in used["6"]  # evaluate read the staged copy
  assert re.search(r"total\s+\d+ s", out)
  # Run again, it finds every stage done (an interrupted rehearsal continues).
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and again.stdout.count("already done") == 10, again.stdout
