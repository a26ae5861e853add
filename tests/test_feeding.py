"""Global arrays from per-process slices: 2 processes x 4 CPU devices == 1 x 8."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import free_port

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")


def _run(process_count, data_dir, out):
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": ""}
  procs = [subprocess.Popen([sys.executable, WORKER, str(port), str(p), str(process_count),
                             data_dir, str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
           for p in range(process_count)]
  logs = [p.communicate(timeout=300)[0].decode() for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
  return json.loads(out.read_text())


# Slow: 3 process start-ups. tests/test_elastic.py's two-process training equal to one
# process (and the rehearsal) needs the same batches; this one says where they differ.
@pytest.mark.slow
def test_two_processes_build_the_same_global_batches(fmnist_data_dir, tmp_path):
  single = _run(1, fmnist_data_dir, tmp_path / "one.json")
  double = _run(2, fmnist_data_dir, tmp_path / "two.json")
  assert len(single) == 3
  np.testing.assert_allclose(np.array(single), np.array(double), rtol=1e-6)
