"""Run health: step time, the share of it spent waiting for input, and model FLOPs
utilisation (MFU), for the trainer's log lines and a one-line summary at the end.

MFU = model FLOPs per second / (peak x devices), with the analytic FLOPs of a DeiT
(``analytic_forward_flops``, x3 for a training step: forward plus a backward twice as
costly) and the chip's dense bf16 peak from ``PEAK_BF16_TFLOPS`` -- the convention of
``deit_jax.bench.benchmark``, which shares both. A CPU has no fixed peak (it is measured by the
benchmark, never assumed), so a CPU run reports "cpu" instead of an MFU; so does a model
without an analytic count. An online teacher's forward is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from deit_jax.models.vit import DeiTConfig

# Dense bf16 TFLOP/s per chip, matched (in this order) on lower-cased device_kind.
PEAK_BF16_TFLOPS = (("v5 lite", 197.0), ("v5e", 197.0), ("v6 lite", 918.0), ("v6e", 918.0),
                    ("v5p", 459.0), ("v5", 459.0), ("v4", 275.0), ("v3", 123.0),
                    ("h200", 989.0), ("h100", 989.0), ("a100", 312.0))

# Above this share of step time spent waiting for input, a run is called input-bound.
INPUT_BOUND_FRACTION = 0.25


def analytic_forward_flops(cfg) -> float | None:
  """Forward FLOPs (2 x MACs) per image of a DeiT: per block 2(4ND^2 + 2N*D*M + 2N^2 D)
  (= 2(12ND^2 + 2N^2 D) for mlp_ratio 4), N = patches + prefix tokens; plus the patch
  embedding and the head(s). None for other architectures."""
  if not isinstance(cfg, DeiTConfig):
    return None
  d, n_p, m = cfg.embed_dim, cfg.num_patches, cfg.mlp_dim
  n = n_p + cfg.num_prefix_tokens
  block = 2 * (4 * n * d * d + 2 * n * d * m + 2 * n * n * d)
  patch = 2 * n_p * d * cfg.patch_size ** 2 * cfg.in_chans
  heads = 2 * d * cfg.num_classes * (2 if cfg.distilled else 1)
  return float(cfg.depth * block + patch + heads)


def table_peak_tflops(device) -> float | None:
  """The table's dense bf16 peak of ``device``; None for a CPU or an unknown kind."""
  kind = device.device_kind.lower()
  return next((value for key, value in PEAK_BF16_TFLOPS if key in kind), None)


def duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


class StepTimer:
  """Times the training loop: wall time per window of steps, the part of it the host
  spent waiting for the next batch, and the time to leave out (evaluation)."""

  def __init__(self, batch_size: int, model_config, devices: list):
    self.batch_size = batch_size
    forward = analytic_forward_flops(model_config)
    peak = table_peak_tflops(devices[0])
    self.platform = devices[0].platform
    self._train_flops = 3 * forward if forward else None
    self._peak_flops = peak * 1e12 * len(devices) if peak else None
    self._start = self._window_start = time.perf_counter()
    self._window_wait = self._window_excluded = self._total_wait = self._total_excluded = 0.0
    self._window_steps = self.steps = 0

  def next(self, batches: Iterator):
    """``next(batches)``, timed as input wait."""
    start = time.perf_counter()
    batch = next(batches)
    waited = time.perf_counter() - start
    self._window_wait += waited
    self._total_wait += waited
    self._window_steps += 1
    self.steps += 1
    return batch

  def exclude(self, seconds: float) -> None:
    """Leaves ``seconds`` (an evaluation) out of step time and throughput."""
    self._window_excluded += seconds
    self._total_excluded += seconds

  def window(self) -> dict[str, float]:
    """Metrics of the steps since the last call: step_time_s, input_wait_frac,
    images_per_sec and, on a chip with a known peak, mfu."""
    now = time.perf_counter()
    elapsed = max(now - self._window_start - self._window_excluded, 1e-9)
    steps = max(self._window_steps, 1)
    out = {"step_time_s": elapsed / steps,
           "input_wait_frac": min(self._window_wait / elapsed, 1.0),
           "images_per_sec": steps * self.batch_size / elapsed}
    if self._train_flops and self._peak_flops:
      out["mfu"] = out["images_per_sec"] * self._train_flops / self._peak_flops
    self._window_start, self._window_wait, self._window_excluded = now, 0.0, 0.0
    self._window_steps = 0
    return out

  def describe(self, metrics: dict[str, float]) -> str:
    """The log line's health part."""
    mfu = (f"MFU {100 * metrics['mfu']:.1f}%" if "mfu" in metrics else
           "MFU n/a (CPU)" if self.platform == "cpu" else "MFU n/a")
    return (f"{1000 * metrics['step_time_s']:.0f} ms/step  "
            f"input wait {100 * metrics['input_wait_frac']:.0f}%  {mfu}")

  def summary(self) -> str:
    """One line for the end of a run."""
    wall = time.perf_counter() - self._start
    train = max(wall - self._total_excluded, 1e-9)
    images = self.steps * self.batch_size
    wait = min(self._total_wait / train, 1.0)
    bound = "input-bound" if wait > INPUT_BOUND_FRACTION else "compute-bound"
    return (f"run summary: {images:,} images seen in {duration(wall)} wall time "
            f"({duration(self._total_excluded)} of it evaluating), {images / train:.1f} img/s "
            f"mean while training, waited for input {100 * wait:.0f}% of the time: {bound}")
