"""Several processes and elastic resume, from one 2-process run (2 x 4 CPU devices, data x
fsdp = 4 x 2): it logs the losses of the same run made by 1 process on 8 devices, and its
step-10 checkpoint continues on another layout (1 process, 4 devices, fsdp 4) with the
uninterrupted run's losses; a layout that cannot split the batch is one line."""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np

from test_main import ROOT, TINY, _losses

COMMON = [*TINY, "--config.total_steps=20", "--config.checkpoint_every_steps=10",
          "--config.log_every_steps=5", "--config.mesh.fsdp=2"]


def _tree_digest(directory):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(path[len(str(directory)):].encode())
      digest.update(open(path, "rb").read())
  return digest.hexdigest()


def _main(workdir, data_dir, *extra):
  return subprocess.run([sys.executable, "-m", "deit_jax.main",
                         "--config=configs/fashion_mnist_deit_tiny.py", f"--workdir={workdir}",
                         f"--config.data_dir={data_dir}", *COMMON, *extra], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_two_processes_match_one_and_resume_onto_another_layout(fmnist_data_dir, tmp_path):
  straight = tmp_path / "straight"
  env = {**os.environ, "DEIT_JAX_CPU_DEVICES": "4", "PYTHON": sys.executable}
  env.pop("DEIT_JAX_LOG_DIR", None)
  out = subprocess.run(["bash", "launch/local_multihost.sh", "2",
                        "--config=configs/fashion_mnist_deit_tiny.py", f"--workdir={straight}",
                        f"--config.data_dir={fmnist_data_dir}", *COMMON], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=env)
  log = straight / "process_1.log"  # in the workdir, not the current directory
  assert out.returncode == 0, out.stderr[-2000:] + (log.read_text()[-2000:] if log.exists() else "")
  assert "2 process(es)" in out.stdout and log.exists()
  assert not os.path.exists(os.path.join(ROOT, "process_1.log"))

  # The same run by 1 process on 8 devices: the same losses.
  single = tmp_path / "single"
  out = _main(single, fmnist_data_dir, "--cpu_devices=8", "--config.checkpoint_every_steps=0")
  assert out.returncode == 0, out.stderr[-2000:]
  assert len(_losses(single)) == 4
  np.testing.assert_allclose(_losses(straight), _losses(single), rtol=1e-5)

  # The run as it stood at step 10, resumed by 1 process on 4 devices with FSDP.
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
