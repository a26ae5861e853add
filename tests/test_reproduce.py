"""launch/reproduce_fashion_mnist.py --preset=tiny end to end: every command of the
reproduction (teacher, logits, early-stopped teacher, students of the paper's Tables 2
and 3, disagreement per seed) on tiny models, then the tables, the verdicts and the
matrix.

About 15 subprocesses (each imports TensorFlow and JAX, loads Fashion-MNIST and compiles),
so ~5 minutes on 2 idle cores and more under load: marked slow (DEIT_JAX_SLOW=1 runs it).
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "reproduce_fashion_mnist.py")


@pytest.mark.slow
def test_tiny_preset_runs_everything_and_reports(fmnist_data_dir, tmp_path):
  work = tmp_path / "reproduce"
  out = subprocess.run([sys.executable, SCRIPT, f"--workdir={work}", "--preset=tiny",
                        f"--set=data_dir={fmnist_data_dir}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=1800)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "machine: " in out.stdout and "budget: " in out.stdout
  table = (work / "table.md").read_text()
  for name in ("none", "hard", "hard_cls", "soft_cls", "hard_vit", "hard_matched"):
    result = json.loads((work / "results" / f"{name}_s0.json").read_text())
    assert 0 <= result["top1"] <= 100 and 0 <= result["agreement"] <= 100
    assert f"| {name} | 1 | {result['top1']:.2f} +- 0.00 |" in table
  hard = json.loads((work / "results" / "hard_s0.json").read_text())
  assert {"top1_cls", "top1_dist"} <= set(hard)
  matched = json.loads((work / "matched_teacher.json").read_text())
  distances = {int(k): abs(v - matched["vit_top1"]) for k, v in matched["checkpoints"].items()}
  assert distances[matched["step"]] == min(distances.values())
  assert f"CNN teacher stopped at step {matched['step']} of 4" in table
  for claim in ("hard > soft, class token only", "distilled agrees more with the CNN",
                "CNN teacher > transformer teacher of about equal accuracy"):
    assert claim in table
  matrix = json.loads((work / "disagreement_s0" / "disagreement.json").read_text())
  assert matrix["names"][:2] == ["groundtruth", "cnn"] and "hard.dist" in matrix["names"]
  assert "Disagreement (fraction of test images" in table
  assert (work / "table4.png").read_bytes()[:4] == b"\x89PNG"
  timings = json.loads((work / "timings.json").read_text())
  assert {"train teacher_cnn", "train none_s0", "train hard_matched_s0"} <= set(timings)
