"""The trainer end to end, in subprocesses: resume after kill -9 is bitwise exact,
SIGTERM saves, bad input is one line. Refusals that only need the trainer's logic (a
foreign checkpoint refused untouched, a non-finite loss, another architecture to start
from) run ``main.train`` in this process: the one-line form of its errors is checked above
(mistyped key, missing config) and a process start costs ~8 s."""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.depth=1", "--config.model.embed_dim=32", "--config.model.num_heads=2",
        "--config.batch_size=32", "--config.total_steps=40", "--config.log_every_steps=10",
        "--config.eval_every_steps=0", "--config.checkpoint_every_steps=10",
        "--config.model.drop_path_rate=0.1", "--config.ema_decay=0.99"]


def _command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "deit_jax.main", "--config=configs/fashion_mnist_deit_tiny.py",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}", *TINY, *extra]


def _run(workdir, data_dir, *extra, check=True):
  out = subprocess.run(_command(workdir, data_dir, *extra), cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  if check:
    assert out.returncode == 0, out.stderr[-3000:]
  return out


def _train_in_process(workdir, data_dir, *extra):
  """``main.train`` on the config the command line builds (TINY + ``extra``), parsed by
  ml_collections' config_flags as the CLI parses it, into flags of this call's own."""
  from absl import flags
  from ml_collections import config_flags

  from deit_jax import main
  argv = ["test", f"--config={ROOT}/configs/fashion_mnist_deit_tiny.py",
          f"--config.data_dir={data_dir}", *TINY, *extra]
  values = flags.FlagValues()  # the overrides' flags are defined from argv, as the CLI's are
  config_flags.DEFINE_config_file("config", None, "config file", lock_config=True,
                                  flag_values=values, sys_argv=argv)
  values(argv)
  handler = signal.getsignal(signal.SIGTERM)  # the trainer's own, for its preemption notice
  try:
    return main.train(values.config, str(workdir))
  finally:
    signal.signal(signal.SIGTERM, handler)


def _tree_digest(directory):
  """One hash of every file's relative path and bytes below ``directory``."""
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(path[len(str(directory)):].encode())
      digest.update(open(path, "rb").read())
  return digest.hexdigest()


def _final_params(workdir, step=40):
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return state["params"]


def _assert_bitwise_equal(a, b):
  import jax
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# The shared run also evaluates at step 20 and keeps the best checkpoint by EMA accuracy.
STRAIGHT = ["--config.eval_every_steps=20", "--config.best_metric=eval_ema_top1"]


@pytest.fixture(scope="module")
def straight(fmnist_data_dir, tmp_path_factory):
  """One uninterrupted 40-step run, shared by the tests that only read it."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  out = _run(workdir, fmnist_data_dir, *STRAIGHT)
  (workdir.parent / "stdout.txt").write_text(out.stdout)
  return workdir


def test_log_reports_run_health(straight):
  import json
  lines = (straight.parent / "stdout.txt").read_text().splitlines()
  steps = [line for line in lines if line.startswith("step ")]
  assert len(steps) == 4 and all("ms/step" in s and "input wait" in s and "MFU n/a (CPU)" in s
                                 for s in steps)
  summary = [line for line in lines if line.startswith("run summary:")]
  assert len(summary) == 1 and "1,280 images seen" in summary[0], lines[-3:]
  assert summary[0].endswith(("input-bound", "compute-bound"))
  rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
  logged = [row for row in rows if "train_loss" in row]
  assert all(row["step_time_s"] > 0 and 0 <= row["input_wait_frac"] <= 1 and "mfu" not in row
             for row in logged)
  # The same progress lines, timed, in the workdir's log (it outlives a preempted VM).
  log = [line.split("  ", 1)[1] for line in (straight / "train.log").read_text().splitlines()]
  assert log[0].startswith("--- ") and f"--workdir={straight}" in log[0]
  assert log[1:] == [line for line in lines if line]


def test_resume_after_kill_is_bitwise_exact(fmnist_data_dir, straight, tmp_path):
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_command(killed, fmnist_data_dir, *STRAIGHT), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "20").exists() and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)  # mid-run, possibly mid-save
  proc.wait()
  resumed = _run(killed, fmnist_data_dir, *STRAIGHT)
  assert "resumed from" in resumed.stdout
  _assert_bitwise_equal(_final_params(straight), _final_params(killed))


def test_sigterm_saves_and_exits_cleanly(fmnist_data_dir, tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_command(workdir, fmnist_data_dir, "--config.total_steps=100000",
                                   "--config.checkpoint_every_steps=0"), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  metrics = workdir / "metrics.jsonl"  # opened before the loop, first written at step 10
  while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  assert "SIGTERM: saved step" in out
  steps = os.listdir(workdir / "checkpoints")
  assert len(steps) == 1 and int(steps[0]) >= 10, (steps, out[-600:])


@pytest.mark.parametrize("change, named", [("model.embed_dim=64", "embed_dim"),
                                           ("ema_decay=0", "EMA weights")])
def test_foreign_checkpoint_is_refused_and_kept(fmnist_data_dir, straight, change, named):
  from deit_jax.errors import UserError
  workdir = straight
  before = sorted(os.listdir(workdir / "checkpoints"))
  with pytest.raises(UserError, match="another run") as refused:
    _train_in_process(workdir, fmnist_data_dir, "--config.total_steps=20", f"--config.{change}")
  assert named in str(refused.value) and "\n" not in str(refused.value)
  assert sorted(os.listdir(workdir / "checkpoints")) == before


def test_finished_run_has_nothing_to_do(fmnist_data_dir, straight, capsys):
  """The same command again (as the chain's re-run does): no step, no evaluation, no new
  checkpoint."""
  before = _tree_digest(straight / "checkpoints")
  assert _train_in_process(straight, fmnist_data_dir, *STRAIGHT) == {}
  out = capsys.readouterr().out
  assert f"{straight} already holds the final step 40 of 40; nothing to do" in out, out
  assert "resumed from" in out and "step 40/40" not in out
  assert _tree_digest(straight / "checkpoints") == before


def test_mistyped_config_key_is_named(fmnist_data_dir, tmp_path):
  out = _run(tmp_path / "run", fmnist_data_dir, "--config.bach_size=3", check=False)
  assert out.returncode != 0
  assert "bach_size" in out.stderr and "Traceback" not in out.stderr


def test_non_finite_loss_stops_naming_the_step(fmnist_data_dir, tmp_path):
  from deit_jax.errors import UserError
  with pytest.raises(UserError, match=r"^loss is (nan|inf) at step \d+; stopped"):
    _train_in_process(tmp_path / "run", fmnist_data_dir, "--config.optimizer.lr=1e12",
                      "--config.optimizer.warmup_steps=1")


def test_missing_config_file_is_one_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "deit_jax.main", "--config=configs/nope.py",
                        f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert "configs/nope.py" in out.stderr.strip().splitlines()[-1]


def _losses(workdir):
  import json
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [row["train_loss"] for row in rows if "train_loss" in row]


def test_init_from_and_evaluate_a_model_directory(fmnist_data_dir, straight, tmp_path):
  import json

  from deit_jax import checkpoint
  source = straight
  # With a zero learning rate, fine-tuning from `source` must keep its weights exactly.
  _train_in_process(tmp_path / "finetune", fmnist_data_dir, f"--config.init_from={source}",
                    "--config.total_steps=2", "--config.optimizer.lr=0",
                    "--config.optimizer.warmup_lr=0", "--config.optimizer.min_lr=0",
                    "--config.eval_every_steps=-1")
  _assert_bitwise_equal(_final_params(tmp_path / "finetune", step=2), _final_params(source))

  model, info = checkpoint.load_trained_model(source)
  assert info["step"] == 40
  checkpoint.save_model(tmp_path / "model_dir", model, name=info["name"],
                        overrides=info["overrides"])
  out = subprocess.run([sys.executable, "-m", "deit_jax.evaluate",
                        "--config=configs/fashion_mnist_deit_tiny.py",
                        f"--checkpoint={tmp_path / 'model_dir'}",
                        f"--config.data_dir={fmnist_data_dir}", "--json", *TINY], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  rows = [json.loads(line) for line in (source / "metrics.jsonl").read_text().splitlines()]
  trained = [row for row in rows if "eval_top1" in row][-1]
  assert result["num_examples"] == 10000
  assert abs(result["top1"] - trained["eval_top1"]) < 1e-6
  assert abs(result["loss"] - trained["eval_loss"]) < 1e-4


def test_finetune_to_new_classes_and_resolution(fmnist_data_dir, tmp_path, capsys):
  """A distilled 10-class 28px model fine-tuned on 3 classes at 32px (with a 3-class
  online teacher): both heads re-initialised, pos_embed resampled, every other weight
  taken as it is (lr 0)."""
  from deit_jax import checkpoint
  from deit_jax.convert import resample_pos_embed
  from deit_jax.models import create_model
  small = dict(patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2)
  name = "deit_tiny_distilled_patch16_224"
  upstream = create_model(name, seed=7, num_classes=10, img_size=28, **small)
  checkpoint.save_model(tmp_path / "upstream", upstream, name=name,
                        overrides=dict(num_classes=10, img_size=28, **small))
  teacher = "deit_tiny_patch16_224"
  checkpoint.save_model(tmp_path / "teacher", create_model(teacher, num_classes=3, img_size=32,
                                                           **small),
                        name=teacher, overrides=dict(num_classes=3, img_size=32, **small))
  _train_in_process(
      tmp_path / "downstream", fmnist_data_dir, f"--config.model.name={name}",
      f"--config.init_from={tmp_path / 'upstream'}", "--config.subset.classes=5,6,7",
      "--config.subset.per_class=20", "--config.num_classes=3", "--config.model.img_size=32",
      "--config.aug.image_size=32", "--config.aug.crop=rrc", "--config.distill.type=hard",
      f"--config.distill.teacher={tmp_path / 'teacher'}", "--config.total_steps=2",
      "--config.optimizer.lr=0", "--config.optimizer.warmup_lr=0",
      "--config.optimizer.min_lr=0", "--config.eval_every_steps=-1")
  assert ("re-initialised ['head']['bias'], ['head']['kernel'], ['head_dist']['bias'], "
          "['head_dist']['kernel'] (checkpoint predicts 10 classes, this run 3); position "
          "embedding resampled 51 -> 66 tokens") in (out := capsys.readouterr().out), out
  tuned = _final_params(tmp_path / "downstream", step=2)
  source = nnx.to_pure_dict(nnx.state(upstream, nnx.Param))
  assert tuned["head"]["kernel"].shape == tuned["head_dist"]["kernel"].shape == (32, 3)
  np.testing.assert_array_equal(tuned["pos_embed"], resample_pos_embed(
      np.asarray(source["pos_embed"]), 2, 8))
  for key in ("cls_token", "dist_token", "blocks", "norm", "patch_embed"):
    _assert_bitwise_equal(tuned[key], jax.tree.map(np.asarray, source[key]))


def test_init_from_another_architecture_is_one_line(fmnist_data_dir, straight, tmp_path):
  from deit_jax.errors import UserError
  with pytest.raises(UserError, match=f"^init_from {re.escape(str(straight))}"):
    _train_in_process(tmp_path / "run", fmnist_data_dir, f"--config.init_from={straight}",
                      "--config.model.depth=2")


def test_ema_metrics_and_best_checkpoint(fmnist_data_dir, straight, tmp_path):
  import json
  workdir = straight
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = {row["step"]: row for row in rows if "eval_top1" in row}
  assert sorted(evals) == [20, 40]
  assert all("eval_ema_top1" in row and "eval_ema_loss" in row for row in evals.values())
  assert any(row["eval_ema_top1"] != row["eval_top1"] for row in evals.values())
  best_step = max(evals, key=lambda s: (evals[s]["eval_ema_top1"], -s))  # first of equals
  assert os.listdir(workdir / "best") == [str(best_step)]
  assert "40" in os.listdir(workdir / "checkpoints")  # the latest ones, as before
  assert "best eval_ema_top1 so far" in (workdir.parent / "stdout.txt").read_text()

  result = subprocess.run([sys.executable, "-m", "deit_jax.evaluate",
                           "--config=configs/fashion_mnist_deit_tiny.py", f"--checkpoint={workdir}",
                           "--best", f"--config.data_dir={fmnist_data_dir}", "--json", *TINY],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  best = json.loads(result.stdout.strip().splitlines()[-1])
  assert best["step"] == best_step
  assert abs(best["top1"] - evals[best_step]["eval_ema_top1"]) < 1e-6

  # A metric the run does not produce is one line, before anything is written.
  from deit_jax.errors import UserError
  with pytest.raises(UserError, match="best_metric='eval_top3' needs evaluation"):
    _train_in_process(tmp_path / "bad", fmnist_data_dir, "--config.best_metric=eval_top3")
  assert not (tmp_path / "bad" / "checkpoints").exists()
