"""Run health: step time, input wait and MFU as the trainer logs them."""

import time
import types

import pytest

from deit_jax import health
from deit_jax.models import model_config
from deit_jax.models.vit import DeiTConfig


def _slow_input(seconds):
  while True:
    time.sleep(seconds)
    yield {}


def test_input_wait_and_mfu_of_a_known_chip():
  cfg = DeiTConfig(**model_config("deit_tiny_patch16_224"))
  tpu = types.SimpleNamespace(device_kind="TPU v4", platform="tpu")
  timer = health.StepTimer(64, cfg, [tpu, tpu])
  batches = _slow_input(0.03)
  for _ in range(5):
    timer.next(batches)
    time.sleep(0.01)  # "compute"
  eval_start = time.perf_counter()
  time.sleep(0.2)  # an evaluation: left out of step time
  timer.exclude(time.perf_counter() - eval_start)
  m = timer.window()
  assert m["step_time_s"] == pytest.approx(0.04, rel=0.5)
  assert 0.5 < m["input_wait_frac"] < 0.95
  assert m["images_per_sec"] == pytest.approx(64 / m["step_time_s"])
  flops = 3 * health.analytic_forward_flops(cfg)
  assert m["mfu"] == pytest.approx(m["images_per_sec"] * flops / (2 * 275e12))
  assert "MFU" in timer.describe(m) and "input wait" in timer.describe(m)
  summary = timer.summary()
  assert summary.startswith("run summary: 320 images seen") and summary.endswith("input-bound")


def test_cpu_reports_no_mfu_and_compute_bound():
  cpu = types.SimpleNamespace(device_kind="cpu", platform="cpu")
  timer = health.StepTimer(8, DeiTConfig(), [cpu])
  batches = iter([{}] * 3)
  for _ in range(3):
    timer.next(batches)
    time.sleep(0.02)
  m = timer.window()
  assert "mfu" not in m and m["input_wait_frac"] < 0.25
  assert "MFU n/a (CPU)" in timer.describe(m)
  assert timer.summary().endswith("compute-bound")
