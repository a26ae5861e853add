"""Several processes and elastic resume, from one 2-process run (2 x 4 CPU devices, data x
fsdp = 4 x 2): its step-10 checkpoint continues on another layout (1 process, 4 devices,
fsdp 4) with the 2-process run's losses; a layout that cannot split the batch is one line.
A SIGTERM to one of the two processes stops both at one step, and the run resumes to its
parameters."""

import os
import shutil
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from test_main import ROOT, TINY, _losses, _tree_digest

# No evaluation (-1): the tests compare training losses and weights.
COMMON = [*TINY, "--config.total_steps=20", "--config.checkpoint_every_steps=10",
          "--config.log_every_steps=5", "--config.mesh.fsdp=2", "--config.eval_every_steps=-1"]


def _main(workdir, data_dir, *extra):
  return subprocess.run([sys.executable, "-m", "deit_jax.main",
                         "--config=configs/fashion_mnist_deit_tiny.py", f"--workdir={workdir}",
                         f"--config.data_dir={data_dir}", *COMMON, *extra], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def _two_processes(workdir, data_dir, *extra, **popen):
  """``launch/local_multihost.sh 2`` of the run: 2 processes x 4 CPU devices."""
  env = {**os.environ, "DEIT_JAX_CPU_DEVICES": "4", "PYTHON": sys.executable}
  env.pop("DEIT_JAX_LOG_DIR", None)
  return subprocess.Popen(["bash", "launch/local_multihost.sh", "2",
                           "--config=configs/fashion_mnist_deit_tiny.py", f"--workdir={workdir}",
                           f"--config.data_dir={data_dir}", *COMMON, *extra], cwd=ROOT, env=env,
                          text=True, **popen)


def _params(workdir, step=20):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  with ocp.PyTreeCheckpointer() as checkpointer:  # as numpy: saved on other devices
    tree = checkpointer.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))["params"]


@pytest.fixture(scope="module")
def straight(fmnist_data_dir, tmp_path_factory):
  """The uninterrupted 2-process run, shared by the tests below."""
  workdir = tmp_path_factory.mktemp("elastic") / "straight"
  proc = _two_processes(workdir, fmnist_data_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  out, err = proc.communicate(timeout=600)
  log = workdir / "process_1.log"  # in the workdir, not the current directory
  assert proc.returncode == 0, err[-2000:] + (log.read_text()[-2000:] if log.exists() else "")
  assert "2 process(es)" in out and log.exists()
  return workdir


def test_two_processes_match_one_and_resume_onto_another_layout(fmnist_data_dir, straight,
                                                                 tmp_path):
  assert not os.path.exists(os.path.join(ROOT, "process_1.log"))

  # The run as it stood at step 10, resumed by 1 process on 4 devices with FSDP: the
  # 2-process run's losses (tests/test_train_step.py checks meshes from the first step).
  resumed = tmp_path / "resumed"
  shutil.copytree(straight / "checkpoints" / "10", resumed / "checkpoints" / "10")
  out = _main(resumed, fmnist_data_dir, "--cpu_devices=4", "--config.mesh.fsdp=4")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "1 process(es)" in out.stdout and "'fsdp': 4" in out.stdout
  assert "at step 10" in out.stdout and "training steps 11..20" in out.stdout
  expected, got = _losses(straight)[-2:], _losses(resumed)  # steps 15 and 20
  assert len(got) == 2
  relative = np.abs(np.asarray(got) - expected) / np.abs(expected)
  print(f"elastic resume: losses {got} vs {expected}, max relative difference {relative.max():.1e}")
  np.testing.assert_allclose(got, expected, rtol=1e-5)

  # 3 devices cannot split the batch of 32: one line, exit 2, the checkpoint untouched.
  bad = tmp_path / "bad"
  shutil.copytree(straight / "checkpoints" / "10", bad / "checkpoints" / "10")
  before = _tree_digest(bad / "checkpoints")
  out = _main(bad, fmnist_data_dir, "--cpu_devices=3", "--config.mesh.fsdp=1")
  assert out.returncode == 2, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: global batch 32 does not split over the 3") and "Traceback" \
      not in out.stderr
  assert _tree_digest(bad / "checkpoints") == before


def _child(pid: int, marker: str) -> int:
  """The child process of ``pid`` whose command line holds ``marker``."""
  for child in open(f"/proc/{pid}/task/{pid}/children").read().split():
    if marker in open(f"/proc/{child}/cmdline").read().split("\0"):
      return int(child)
  raise AssertionError(f"no child of {pid} with {marker}")


def test_sigterm_to_one_process_stops_both_at_one_step(fmnist_data_dir, straight, tmp_path):
  workdir = tmp_path / "run"  # the straight run's command
  proc = _two_processes(workdir, fmnist_data_dir, stdout=subprocess.PIPE,
                        stderr=open(tmp_path / "stderr", "w"), start_new_session=True)
  hung = threading.Timer(300, os.killpg, (proc.pid, signal.SIGKILL))
  hung.start()
  lines = []
  for line in proc.stdout:  # process 0's; the loop starts after "training steps"
    lines.append(line)
    if line.startswith("training steps"):
      os.kill(_child(proc.pid, "--process_id=1"), signal.SIGTERM)
  proc.wait()
  hung.cancel()
  log = (workdir / "process_1.log").read_text()
  assert proc.returncode == 0, (tmp_path / "stderr").read_text()[-2000:] + log[-2000:]
  said = [line.split() for line in lines if line.startswith("SIGTERM: saved step")]
  assert len(said) == 1, lines[-5:]
  stop = int(said[0][3])
  # Both processes wrote that step (array metadata of each), and it is the only new one.
  assert (workdir / "checkpoints" / str(stop) / "state" / "array_metadatas" / "process_1").exists()
  expected = {stop} | ({10} if stop > 10 else set())
  assert 1 <= stop < 20 and {int(s) for s in os.listdir(workdir / "checkpoints")} == expected

  proc = _two_processes(workdir, fmnist_data_dir, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0 and f"at step {stop}" in out, err[-2000:]
  print(f"SIGTERM to process 1 stopped both at step {stop}")
  for a, b in zip(jax.tree.leaves(_params(straight)), jax.tree.leaves(_params(workdir)),
                  strict=True):
    np.testing.assert_array_equal(a, b)
