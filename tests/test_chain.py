"""The README's main job in miniature: teacher -> logits -> distilled student -> evaluation
(every CLI involved, as subprocesses) on an image-folder dataset -- nothing in the chain is
tied to Fashion-MNIST -- and the distillation set-up errors a user can hit. A re-run
reuses what is done through its commands' own checks (a finished run: tests/test_main.py;
finished logit shards: tests/test_teacher.py), not through anything of the chain's."""

import json
import os
import subprocess
import sys

import pytest
from conftest import image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = ["total_steps=12", "batch_size=16", "model.name=cifar_resnet8",
           "checkpoint_every_steps=6", "log_every_steps=6"]
STUDENT = ["total_steps=8", "batch_size=16", "model.depth=1", "model.embed_dim=32",
           "model.num_heads=2", "checkpoint_every_steps=4", "log_every_steps=4"]


def _chain(workdir, dataset, *extra):
  command = [sys.executable, "-m", "deit_jax.chain", f"--workdir={workdir}",
             f"--set=dataset={dataset}", "--set=num_classes=3",
             *(f"--teacher_set={s}" for s in TEACHER),
             *(f"--student_set={s}" for s in STUDENT), "--storage=topk", "--k=3", *extra]
  out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def test_chain_end_to_end(tmp_path):
  work, dataset = tmp_path / "chain", image_folder(tmp_path / "images")
  first = _chain(work, dataset)
  student = json.loads((work / "results" / "student.json").read_text())
  assert student["num_examples"] == 12
  for key in ("top1", "top5", "top1_cls", "top1_dist", "loss", "agreement",
              "agreement_cls", "agreement_dist"):
    assert key in student, key
  assert "student/teacher agreement" in first and "[5/5]" in first
  # the precompute says how often the teacher repeats the labels (train and eval split)
  assert first.count("the teacher agrees with the labels on") == 2
  assert first.startswith("CPU: ") and first.count(" s  ") >= 5  # CPU model, stage times
  manifest = json.loads((work / "teacher_logits" / "train" / "manifest.json").read_text())
  assert manifest["teacher"]["name"] == "cifar_resnet8" and manifest["k"] == 3
  assert manifest["num_examples"] == 48 and manifest["teacher"]["step"] == 12


def _main(workdir, data_dir, *extra):
  command = [sys.executable, "-m", "deit_jax.main",
             "--config=configs/fashion_mnist_deit_tiny_distilled.py", f"--workdir={workdir}",
             f"--config.data_dir={data_dir}", *(f"--config.{s}" for s in STUDENT), *extra]
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_distillation_setup_errors_are_one_line(fmnist_data_dir, tmp_path):
  from deit_jax.teacher import store
  # Logits of the test split offered for training on the train split.
  logits = tmp_path / "logits"
  logits.mkdir()
  ids = list(range(10000))
  store.write_shard(str(logits), ids, store.compress([[0.0] * 10] * 10000, "topk", 1))
  store.write_manifest(str(logits), {
      "dataset": "fashion_mnist", "split": "test", "num_examples": 10000, "num_classes": 10,
      "storage": "topk", "k": 1, "views": 0, "teacher": {"name": "t"},
      "shards": [store.shard_name(0, 10000)]})
  # Through the command line once (the one-line error path), the other set-ups in-process.
  out = _main(tmp_path / "run", fmnist_data_dir, f"--config.distill.teacher_logits={logits}")
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and "split: logits test vs run train" in lines[-1]
  assert "Traceback" not in out.stderr
  from configs import fashion_mnist_deit_tiny_distilled
  from deit_jax import main
  from deit_jax.errors import UserError
  for overrides, message in [({}, "needs exactly one of distill.teacher_logits"),
                             ({"type": "none"}, "would leave untrained")]:
    config = fashion_mnist_deit_tiny_distilled.get_config()
    config.update(dict(data_dir=fmnist_data_dir, total_steps=8, batch_size=16))
    config.model.update(dict(depth=1, embed_dim=32, num_heads=2))
    config.distill.update(overrides)
    with pytest.raises(UserError, match=message):
      main.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any step
