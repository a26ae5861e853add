"""Throughput benchmark of the real train step (or inference), with FLOPs, MFU and memory.

    python -m deit_jax.bench.benchmark --model=deit_small_distilled_patch16_224 \
        --batch_size=256 --mode=train [--dtype=bfloat16] [--steps=20] [--warmup=2] [--json]
        [--vs_timm] [--timm_compile] [--attn_impl=xla|dot_product|cudnn]

``--batch_size=auto`` times each of ``--batch_sizes`` in ascending order up to the first
out-of-memory and reports the fastest (``sweep`` in the JSON; peak memory is the sweep's);
timm runs at that size, halved until it fits (on one GPU our side then runs in a child
process, whose exit hands JAX's memory back to torch).

``train`` times the very function ``deit_jax.main`` trains with (same model factory, AdamW
with DeiT's no-decay set, state shardings, on-device Mixup/CutMix, hard distillation for
distilled models against random teacher logits, EMA), jitted with the same shardings and
donation; ``infer`` times the jitted eval-mode forward. Inputs are random arrays already on
device, so the input pipeline is not measured. After ``--warmup`` untimed steps, the
``--steps`` timed ones run as the trainer runs them: dispatched back to back (in two
windows, each synced once at its end), so the host's dispatch overlaps the device's work;
the mean step is reported, with each window's.

FLOPs per image are model FLOPs (2 x MACs): for DeiT the analytic count
(``analytic_forward_flops``; training = 3 x forward), for other models XLA's cost analysis
of the compiled step; XLA's count is printed alongside as a cross-check. ``--json`` prints
one JSON object as the last line of stdout (with ``--vs_timm`` also one before timm runs,
without the timm keys, in case timm fails hard or the run is cut off). Nothing here imports
TensorFlow.
"""

from __future__ import annotations

import ast
import dataclasses
import gc
import json
import sys
import time

import jax
import numpy as np
from flax import nnx

from deit_jax import builder, sharding, train_step as ts
from deit_jax.bench.options import Options, child_argv, parse_args
from deit_jax.bench.vs_timm import jax_in_child, run_timm, time_steps
from deit_jax.data import mixup
from deit_jax.errors import BenchError, UserError
from deit_jax.models import DeiTConfig, create_model, model_config
from deit_jax.teacher.feed import Teacher

# Dense bf16 TFLOP/s per chip, matched (in this order) on lower-cased device_kind.
PEAK_BF16_TFLOPS = (("v5 lite", 197.0), ("v5e", 197.0), ("v6 lite", 918.0), ("v6e", 918.0),
                    ("v5p", 459.0), ("v5", 459.0), ("v4", 275.0), ("v3", 123.0),
                    ("h200", 989.0), ("h100", 989.0), ("a100", 312.0))

_JAX_RUNTIME_ERROR = getattr(jax.errors, "JaxRuntimeError", RuntimeError)  # XlaRuntimeError


def _key_values(items, what):
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise BenchError(f"{what} {item!r} is not KEY=VALUE")
    try:
      out[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[key.strip()] = value.strip()
  return out


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


def measure_cpu_peak_tflops(n: int = 2048, repeats: int = 5) -> float:
  """Best-of-``repeats`` float32 n x n matmul rate of this device, in TFLOP/s."""
  a = jax.random.normal(jax.random.key(0), (n, n), np.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e12


def peak_tflops(device, override: float | None) -> tuple[float, str]:
  if override is not None:
    return override, "--peak_tflops"
  kind = device.device_kind.lower()
  for key, value in PEAK_BF16_TFLOPS:
    if key in kind:
      return value, f"table ({device.device_kind}, dense bf16)"
  if device.platform == "cpu":
    return measure_cpu_peak_tflops(), "measured (fp32 2048x2048 matmul)"
  raise BenchError(f"no peak TFLOP/s known for {device.device_kind!r}: pass --peak_tflops")


def _xla_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _random_batch(cfg, batch_size: int, distilled: bool, mesh, seed: int = 0):
  rng = np.random.default_rng(seed)
  batch = {"image": rng.standard_normal((batch_size, cfg.img_size, cfg.img_size,
                                         cfg.in_chans), np.float32),
           "label": rng.integers(0, cfg.num_classes, batch_size).astype(np.int32)}
  if distilled:
    batch["teacher_logits"] = rng.standard_normal((batch_size, cfg.num_classes), np.float32)
  return jax.device_put(batch, sharding.batch_sharding(mesh))


def build_train(model: builder.Model, mesh, batch):
  """The compiled train step exactly as ``deit_jax.main`` builds it (``deit_jax.builder``),
  and its first state."""
  distilled = bool(getattr(model.config, "distilled", False))
  batch_size = batch["image"].shape[0]
  tx, schedule = builder.build_optimizer(model, lr=5e-4 * batch_size / 512,
                                         total_steps=10_000, warmup_steps=100,
                                         weight_decay=0.05)
  state_sharding, init = builder.build_state(model, tx, mesh, seed=0, ema=True)
  loss_config = ts.LossConfig(model.config.num_classes, "hard" if distilled else "none")
  # The batch carries random teacher logits: a Teacher with those keys and no model.
  train_step = builder.build_train_step(model, tx, schedule, state_sharding, mesh,
                                        loss_config=loss_config,
                                        mixup_config=mixup.MixupConfig(),
                                        teacher=Teacher(tuple(batch)), ema_decay=0.99996)
  state = init()
  return train_step.compile(state, batch), state


def build_infer(model: builder.Model, mesh, batch):
  """The jitted eval-mode forward (as ``deit_jax.eval_step`` runs the model)."""
  model_def = model.definition
  params_sharding, rest_sharding = ts.model_shardings(model.abstract, mesh)
  batch_sharding = sharding.batch_sharding(mesh)

  def init():
    _, params, rest = ts.split_model(model.make())
    return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  def forward(params, rest, images):
    module = model_def.merge(params, rest)
    module.eval()
    return module(images)

  params, rest = jax.jit(init, out_shardings=(params_sharding, rest_sharding))()
  fwd = jax.jit(forward, in_shardings=(params_sharding, rest_sharding, batch_sharding),
                out_shardings=batch_sharding)
  return fwd.lower(params, rest, batch["image"]).compile(), (params, rest)


def _is_jax_oom(e: BaseException) -> bool:
  if isinstance(e, MemoryError):  # host memory, for the random batch
    return True
  msg = str(e)
  return isinstance(e, _JAX_RUNTIME_ERROR) and (
      "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower())


def _bench_jax(args, batch_size, impl, overrides, mesh, peak) -> tuple[dict, str]:
  """Compiles and times our step at one batch size; returns its result and the attention
  implementation used (``cudnn`` falls back to ``dot_product`` when it fails to build)."""
  while True:
    ov = dict(overrides, **({"attn_impl": impl} if impl else {}))
    model = builder.build_model(args.model, ov, seed=0)
    cfg = model.config
    distilled = bool(getattr(cfg, "distilled", False))
    batch = _random_batch(cfg, batch_size, distilled, mesh)
    start = time.perf_counter()
    try:
      if args.mode == "train":
        compiled, state = build_train(model, mesh, batch)
        holder = {"state": state, "out": None}

        def step():
          holder["state"], holder["out"] = compiled(holder["state"], batch)
      else:
        compiled, (params, rest) = build_infer(model, mesh, batch)
        images = batch["image"]
        holder = {"out": None}

        def step():
          holder["out"] = compiled(params, rest, images)
      sync = lambda: jax.block_until_ready(holder)
      compile_s = time.perf_counter() - start
      warmup = args.warmup
      if impl == "cudnn":  # cuDNN can also refuse at the first run: one warm-up step here
        step()
        sync()
        warmup = max(warmup - 1, 0)
    except Exception as e:  # pylint: disable=broad-except
      if impl != "cudnn" or _is_jax_oom(e):
        raise
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      print(f"note: attention 'cudnn' failed to build ({type(e).__name__}: {reason}); "
            "falling back to 'dot_product'", flush=True)
      impl = "dot_product"
      continue
    break
  step_s, windows = time_steps(step, sync, warmup, args.steps)

  n_dev = mesh.size
  device = mesh.devices.flat[0]
  xla_per_image = _xla_flops(compiled)
  xla_per_image = xla_per_image * n_dev / batch_size if xla_per_image else None
  forward = analytic_forward_flops(cfg)
  if forward is not None:
    per_image = forward * (3 if args.mode == "train" else 1)
    flops_source = "analytic" + (" (3 x forward)" if args.mode == "train" else "")
  else:
    per_image, flops_source = xla_per_image, "xla cost analysis"
  images_per_sec = batch_size / step_s
  mfu = images_per_sec * per_image / (peak[0] * 1e12 * n_dev) if per_image else None
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  result = {
      "model": args.model, "batch_size": batch_size, "mode": args.mode,
      "dtype": args.dtype, "device_kind": device.device_kind, "platform": device.platform,
      "num_devices": n_dev, "mesh": dict(mesh.shape), "steps": args.steps,
      "warmup": args.warmup, "compile_s": compile_s, "step_ms": 1e3 * step_s,
      "step_ms_windows": [1e3 * t for t in windows],
      "images_per_sec": images_per_sec, "flops_per_image": per_image,
      "flops_source": flops_source, "xla_flops_per_image": xla_per_image,
      "peak_tflops": peak[0], "peak_tflops_source": peak[1], "mfu": mfu,
      "peak_memory_bytes": (stats or {}).get("peak_bytes_in_use"), "attn_impl": impl,
  }
  if args.mode == "train":
    result["final_loss"] = float(holder["out"]["train_loss"])
  return result, impl


def _sweep(args, impl, overrides, mesh, peak) -> dict:
  """``--batch_size auto``: our step at each of ``--batch_sizes`` (ascending) until the
  first out-of-memory (or ``--sweep_budget``); the result of the fastest, with the sweep."""
  results, stopped, start = [], None, time.perf_counter()
  for b in args.batch_sizes:
    if results and args.sweep_budget and time.perf_counter() - start > args.sweep_budget:
      stopped = f"sweep budget {args.sweep_budget:g} s used"
      break
    try:
      r, impl = _bench_jax(args, b, impl, overrides, mesh, peak)
    except Exception as e:  # pylint: disable=broad-except
      # Past the first size, any XLA runtime error (cuBLAS/cuDNN workspace allocation
      # failures read differently) ends the sweep rather than the run.
      if not (_is_jax_oom(e) or (results and isinstance(e, _JAX_RUNTIME_ERROR))):
        raise
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      stopped = f"{'out of memory' if _is_jax_oom(e) else 'failed'} at batch {b}"
      print(f"  sweep  batch {b:<6} {stopped.split(' at ')[0]} ({first}): sweep stops",
            flush=True)
    gc.collect()  # free this size's state and executable before the next
    if stopped:
      break
    results.append(r)
    print(f"  sweep  batch {b:<6} {r['images_per_sec']:10.1f} images/s  ({r['step_ms']:.2f} "
          f"ms/step, compile {r['compile_s']:.1f} s)", flush=True)
  if not results:
    raise BenchError(f"out of memory already at batch size {args.batch_sizes[0]}: pass "
                     "smaller --batch_sizes")
  best = dict(max(results, key=lambda r: r["images_per_sec"]))
  best["sweep"] = [{"batch_size": r["batch_size"], "images_per_sec": r["images_per_sec"]}
                   for r in results]
  best["sweep_stopped"] = stopped
  return best


def main(argv=None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  overrides = _key_values(args.override, "--override")
  mesh_sizes = _key_values(args.mesh.split(","), "--mesh")
  if "dtype" in overrides:
    raise BenchError("set the compute dtype with --dtype, not --override dtype=...")
  if args.attn_impl and "attn_impl" in overrides:
    raise BenchError("give the attention with --attn_impl or --override attn_impl, not both")
  overrides["dtype"] = args.dtype
  try:
    model_config(args.model, **overrides)
    abstract = nnx.eval_shape(lambda: create_model(args.model, seed=0, **overrides))
  except (ValueError, TypeError) as e:
    raise BenchError(str(e).splitlines()[0]) from None
  cfg = abstract.config
  distilled = bool(getattr(cfg, "distilled", False))
  has_attn = hasattr(cfg, "attn_impl")
  if args.attn_impl and not has_attn:
    raise BenchError(f"--attn_impl: {args.model} has no attention")
  if args.vs_timm:
    try:
      import timm  # pylint: disable=import-outside-toplevel  # (imports torch)
    except ImportError as e:
      raise BenchError(f"--vs_timm needs torch and timm installed ({e})") from None
    if not timm.is_model(args.model):
      raise BenchError(f"--vs_timm: timm has no model {args.model!r}")
  timm_overrides = {k: v for k, v in overrides.items() if k != "dtype"}
  on_gpu = args.vs_timm and sys.modules["torch"].cuda.is_available()
  timm_result, in_child = None, args.jax_in_child or (on_gpu and args.auto)
  if in_child:
    # timm needs the batch size our sweep picks, and JAX keeps its GPU memory till exit.
    result = jax_in_child(child_argv(args), echo_json=args.json)
    if result is None:
      raise BenchError("our side (run in a child process) failed")
  else:
    if on_gpu:  # same GPU: run torch before JAX's client preallocates most of its memory
      timm_result = _run_timm(args, timm_overrides, distilled, args.batch_size, False)
    try:
      mesh = sharding.make_mesh({k: int(v) for k, v in mesh_sizes.items()})
    except (ValueError, TypeError) as e:
      raise BenchError(f"--mesh {args.mesh}: {e}") from None
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for b in args.batch_sizes:
      if b % shards:
        raise BenchError(f"batch size {b} is not divisible by the {shards} data-parallel "
                         f"shards of mesh {dict(mesh.shape)} ({jax.device_count()} device(s))")
    device = mesh.devices.flat[0]
    impl = overrides.pop("attn_impl", args.attn_impl)
    if has_attn and impl is None:  # flash attention where cuDNN has it
      impl = ("cudnn" if device.platform == "gpu" and args.dtype in ("bfloat16", "float16")
              and not cfg.attn_drop_rate else "xla")
    try:
      if impl:
        dataclasses.replace(cfg, attn_impl=impl)  # validates
    except ValueError as e:
      raise BenchError(str(e).splitlines()[0]) from None
    peak = peak_tflops(device, args.peak_tflops)
    if args.auto:
      result = _sweep(args, impl, overrides, mesh, peak)
    else:
      result, _ = _bench_jax(args, args.batch_size, impl, overrides, mesh, peak)
    result["overrides"] = timm_overrides
    _report(result)
  if args.vs_timm:
    if args.json and timm_result is None and not in_child:  # last line if timm never ends
      print(json.dumps(result, sort_keys=True), flush=True)
    result.update(timm_result or _run_timm(args, timm_overrides, distilled,
                                          result["batch_size"], args.auto))
    if "timm_error" not in result:
      result["speedup_vs_timm"] = result["images_per_sec"] / result["timm_images_per_sec"]
      print(f"  timm ({result['timm_device']}, {result['timm_threads']} threads"
            f"{', torch.compile' if result['timm_compiled'] else ''})  "
            f"{result['timm_images_per_sec']:.1f} images/s at batch "
            f"{result['timm_batch_size']}, {result['timm_step_ms']:.1f} ms/step  ->  speed-up "
            f"{result['speedup_vs_timm']:.2f}x", flush=True)
  result["tensorflow_imported"] = "tensorflow" in sys.modules
  if args.json:
    print(json.dumps(result, sort_keys=True), flush=True)
  return result


def _gflop(x):
  if x is None:
    return "n/a"
  return f"{x / 1e9:.3f} GFLOP" if x >= 1e8 else f"{x / 1e6:.3f} MFLOP"


def _report(r: dict) -> None:
  mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items())
  mem = r["peak_memory_bytes"]
  lines = [
      f"{r['model']}  {r['mode']}  batch {r['batch_size']}  {r['dtype']}  on {r['num_devices']}"
      f" x {r['device_kind']} (mesh {mesh})" + (f"  attention {r['attn_impl']}"
                                                 if r.get("attn_impl") else "")
      + (f"  overrides {r['overrides']}" if r["overrides"] else ""),
      f"  compile        {r['compile_s']:.2f} s",
      f"  step           {r['step_ms']:.2f} ms (mean of {r['steps']} steps run back to back; "
      f"per window {', '.join(f'{t:.2f}' for t in r['step_ms_windows'])})",
      f"  throughput     {r['images_per_sec']:.1f} images/s",
      f"  FLOPs/image    {_gflop(r['flops_per_image'])} ({r['flops_source']}); XLA cost "
      f"analysis {_gflop(r['xla_flops_per_image'])}",
      f"  peak           {r['peak_tflops']:.3f} TFLOP/s per device, {r['peak_tflops_source']}",
      "  MFU            " + ("n/a" if r["mfu"] is None else f"{100 * r['mfu']:.2f}%"),
      "  peak memory    " + ("n/a" if mem is None else f"{mem / 2 ** 30:.2f} GiB (device 0)"),
  ]
  if "final_loss" in r:
    lines.append(f"  last loss      {r['final_loss']:.4f}")
  if "sweep" in r:
    lines.append(f"  batch size     {r['batch_size']}: the fastest of "
                 f"{','.join(str(e['batch_size']) for e in r['sweep'])}"
                 + (f" ({r['sweep_stopped']})" if r["sweep_stopped"] else ""))
  print("\n".join(lines), flush=True)


def _run_timm(args: Options, timm_overrides, distilled, batch_size, auto) -> dict:
  return run_timm(args.model, timm_overrides, mode=args.mode, dtype=args.dtype,
                  warmup=args.warmup, steps=args.steps, timm_compile=args.timm_compile,
                  distilled=distilled, batch_size=batch_size, auto=auto)


def run(argv=None) -> int:
  """The CLI: 0, or 2 on bad input, or 3 when --vs_timm's timm side failed (the JSON line
  then has ``timm_error`` in place of timm's numbers)."""
  try:
    result = main(argv)
  except UserError as e:  # BenchError and the library's user errors; a bug keeps its traceback
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  return 3 if "timm_error" in result else 0


if __name__ == "__main__":
  sys.exit(run())
