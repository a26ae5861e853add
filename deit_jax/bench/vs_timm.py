"""The timm (PyTorch) side of ``python -m deit_jax.bench.benchmark --vs_timm``, and the child
process that runs our side first when both share one GPU.

Imports torch and timm only when called, so the benchmark's import path stays free of both
(and of TensorFlow).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time

from deit_jax.models import model_config

TIMM_KWARGS = ("num_classes", "img_size", "patch_size", "in_chans", "embed_dim", "depth",
               "num_heads", "mlp_ratio", "qkv_bias", "drop_rate", "attn_drop_rate",
               "drop_path_rate")


def is_torch_oom(e: BaseException) -> bool:
  """torch.cuda.OutOfMemoryError, also when torch.compile wraps it in its own errors."""
  import torch
  while e is not None:
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
      return True
    e = e.__cause__ or e.__context__
  return False


def _release(device, compiled: bool) -> None:
  import torch
  if compiled:
    import torch._dynamo  # pylint: disable=import-outside-toplevel,protected-access
    torch._dynamo.reset()  # pylint: disable=protected-access  # drops compiled graphs
  gc.collect()
  if device.type == "cuda":
    torch.cuda.empty_cache()


def _run(name, overrides, mode, dtype, b, warmup, steps, compile_model, distilled, device):
  import torch
  import torch.nn.functional as F
  import timm
  import timm.optim

  kwargs = {k: v for k, v in overrides.items() if k in TIMM_KWARGS}
  model = timm.create_model(name, pretrained=False, **kwargs).to(device)
  cfg = model_config(name, **overrides)
  size, chans = cfg.get("img_size", 224), cfg.get("in_chans", 3)
  classes = model.num_classes
  gen = torch.Generator().manual_seed(0)
  images = torch.randn(b, chans, size, size, generator=gen).to(device)
  labels = torch.randint(0, classes, (b,), generator=gen).to(device)
  teacher = torch.randint(0, classes, (b,), generator=gen).to(device)
  bf16 = dtype == "bfloat16"
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

  if mode == "train":
    model.train()
    if distilled:
      model.set_distilled_training(True)
    groups = timm.optim.param_groups_weight_decay(model, 0.05, model.no_weight_decay())
    opt = torch.optim.AdamW(groups, lr=5e-4 * b / 512)
    forward = torch.compile(model) if compile_model else model  # fwd + bwd compiled

    def step():
      with autocast():
        out = forward(images)
        if distilled:
          loss = (0.5 * F.cross_entropy(out[0].float(), labels, label_smoothing=0.1)
                  + 0.5 * F.cross_entropy(out[1].float(), teacher))
        else:
          loss = F.cross_entropy(out.float(), labels, label_smoothing=0.1)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
  else:
    model.eval()
    forward = torch.compile(model) if compile_model else model

    def step():
      with torch.inference_mode(), autocast():
        forward(images)

  start = time.perf_counter()
  step()  # first step: compiles under torch.compile
  sync()
  first_s = time.perf_counter() - start
  return time_steps(step, sync, max(warmup - 1, 0), steps)[0], first_s


def time_steps(dispatch, sync, warmup: int, steps: int, windows: int = 2):
  """Seconds per step as a training loop runs: after ``warmup`` untimed steps (each
  synced), the ``steps`` timed ones in ``windows`` back-to-back runs, each dispatched
  without waiting and synced once at its end (the trainer reads its metrics only every
  ``log_every_steps``, so the host's dispatch overlaps the device's work). Returns the mean
  over all timed steps and each window's mean. Shared by the JAX and the timm side."""
  for _ in range(warmup):
    dispatch()
    sync()
  sizes = [n for n in (steps // windows + (i < steps % windows) for i in range(windows)) if n]
  means = []
  for n in sizes:
    start = time.perf_counter()
    for _ in range(n):
      dispatch()
    sync()
    means.append((time.perf_counter() - start) / n)
  return sum(m * n for m, n in zip(means, sizes)) / sum(sizes), means


def bench_timm(name, overrides, *, mode, dtype, batch_size, warmup, steps, distilled,
               compile_model=False, halve_on_oom=False) -> dict:
  """timm's model in PyTorch: same batch and dtype (bf16 via torch.autocast); train =
  forward + DeiT hard-distillation loss (CE on cls, CE on dist vs random teacher labels,
  0.5/0.5) + backward + AdamW (DeiT's no-decay set); infer = eval() under inference_mode.
  ``compile_model`` wraps the model in torch.compile (default mode; the first warm-up step
  compiles). ``halve_on_oom``: on CUDA out-of-memory retry with half the batch."""
  import torch

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  b = batch_size
  while True:
    oom = None
    try:
      step_s, first_s = _run(name, overrides, mode, dtype, b, warmup, steps, compile_model,
                             distilled, device)
    except Exception as e:  # pylint: disable=broad-except
      if not (halve_on_oom and b > 1 and is_torch_oom(e)):
        raise
      oom = f"{type(e).__name__}"
    _release(device, compile_model)  # outside `except`: no traceback pins the model now
    if oom is None:
      break
    print(f"  timm: out of memory at batch {b} ({oom}), retrying with {b // 2}", flush=True)
    b //= 2
  return {"timm_images_per_sec": b / step_s, "timm_step_ms": 1e3 * step_s,
          "timm_batch_size": b, "timm_first_step_s": first_s,
          "timm_compiled": bool(compile_model), "timm_device": str(device),
          "timm_threads": torch.get_num_threads()}


def jax_in_child(argv: list[str], *, echo_json: bool) -> dict | None:
  """Runs our side (``python -m deit_jax.bench.benchmark`` with ``argv``) in a child
  process, its text passed through, and returns its JSON: on one GPU shared with torch,
  the child's exit hands all of JAX's memory back for timm."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (root, os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.Popen([sys.executable, "-m", "deit_jax.bench.benchmark", *argv],
                          stdout=subprocess.PIPE, text=True, env=env)
  last = None
  for line in proc.stdout:
    if line.startswith("{"):
      last = line
    if echo_json or not line.startswith("{"):  # its JSON line stands in if timm dies
      print(line, end="", flush=True)
  rc = proc.wait()
  return None if rc or last is None else json.loads(last)


def run_timm(name: str, timm_overrides: dict, *, mode: str, dtype: str, warmup: int,
             steps: int, timm_compile: bool, distilled: bool, batch_size: int,
             auto: bool) -> dict:
  """bench_timm for the CLI: if torch.compile fails (not for memory), eager timm is timed
  instead (``timm_compile_error``); a failure is reported (``timm_error``), not raised."""
  import torch
  compile_error = None
  for compile_model in ((True, False) if timm_compile else (False,)):
    try:
      result = bench_timm(name, timm_overrides, mode=mode, dtype=dtype,
                          batch_size=batch_size, warmup=warmup, steps=steps,
                          distilled=distilled, compile_model=compile_model,
                          halve_on_oom=auto)
      return dict(result, **({"timm_compile_error": compile_error} if compile_error else {}))
    except Exception as e:  # pylint: disable=broad-except  # keep our numbers
      error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
      if not compile_model or is_torch_oom(e):
        break
      compile_error = error
    # Out of the except block (its traceback pinned the model): free it, then go eager.
    _release(torch.device("cuda" if torch.cuda.is_available() else "cpu"), True)
    print(f"  timm: torch.compile failed ({compile_error}); timing eager timm instead",
          flush=True)
  print(f"  timm failed: {error}", flush=True)
  return {"timm_error": error, "timm_compiled": False,
          **({"timm_compile_error": compile_error} if compile_error else {})}
