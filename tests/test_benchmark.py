"""The benchmark CLI (deit_jax.bench.benchmark) on a tiny DeiT: JSON keys, timm comparison,
no TensorFlow on its import path, analytic FLOPs against the published counts, one-line
errors."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from deit_jax import train_step as ts
from deit_jax.bench import benchmark
from deit_jax.models import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "deit_tiny_distilled_patch16_224"
TINY = ["--override", "depth=1", "--override", "embed_dim=32", "--override", "num_heads=2",
        "--override", "img_size=32", "--override", "patch_size=16"]
KEYS = {"images_per_sec", "step_ms", "mfu", "model", "batch_size", "mode", "dtype",
        "device_kind", "flops_per_image", "peak_tflops"}


def _cli(*args, timeout=240):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "deit_jax.bench.benchmark", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def _json(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_cli_json_vs_timm(mode):
  pytest.importorskip("timm")
  proc = _cli("--model", MODEL, "--batch_size", "4", "--mode", mode, "--steps", "2",
              "--warmup", "1", "--json", "--vs_timm", *TINY,
              *(["--peak_tflops", "0.1"] if mode == "infer" else []))  # train: CPU probe
  result = _json(proc)
  assert KEYS | {"timm_images_per_sec", "speedup_vs_timm"} <= set(result)
  assert result["mode"] == mode and result["batch_size"] == 4 and result["model"] == MODEL
  assert result["images_per_sec"] > 0 and result["step_ms"] > 0 and result["mfu"] > 0
  assert result["timm_images_per_sec"] > 0 and result["speedup_vs_timm"] > 0
  assert result["flops_source"].startswith("analytic")
  assert result["peak_tflops"] > 0
  assert not result["tensorflow_imported"]
  if mode == "train":
    # 3 x forward of the tiny distilled model: 2 tokens of prefix + 4 patches, D = 32.
    n, d = 6, 32
    forward = 2 * (12 * n * d * d + 2 * n * n * d) + 2 * 4 * d * 768 + 2 * d * 1000 * 2
    assert result["flops_per_image"] == pytest.approx(3 * forward)
    assert result["peak_tflops_source"].startswith("measured")
    assert jnp.isfinite(result["final_loss"])
  # Text report above the JSON line.
  assert "images/s" in proc.stdout and "MFU" in proc.stdout and "speed-up" in proc.stdout


def test_no_tensorflow_on_the_benchmark_path():
  argv = ["--model", MODEL, "--batch_size", "2", "--mode", "infer", "--steps", "1",
          "--warmup", "0", "--peak_tflops", "0.1", *TINY]
  code = (
      "import sys\n"
      "from deit_jax.bench import benchmark\n"
      f"r = benchmark.main({argv!r})\n"
      "assert r['images_per_sec'] > 0\n"
      "assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules\n"
      "                                               if m.startswith('tensorflow'))\n"
      "print('TF-FREE')\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "TF-FREE" in proc.stdout


@pytest.mark.parametrize("name,gflops", [("deit_tiny_patch16_224", 2.5),
                                         ("deit_small_patch16_224", 9.2),
                                         ("deit_base_patch16_224", 35.1),
                                         ("deit_base_patch16_384", 111.0)])
def test_analytic_flops_match_reference(name, gflops):
  """Ti 2.5, S 9.2, B 35.1 GFLOP (B 384 ~111) per forward: twice the GMACs timm lists for
  these models (1.3, 4.6, 17.6, 55.5)."""
  abstract = nnx.eval_shape(lambda: create_model(name))
  assert benchmark.analytic_forward_flops(abstract.config) / 1e9 == pytest.approx(gflops,
                                                                                 rel=0.03)


def test_analytic_flops_close_to_xla_count():
  """XLA's count of the real forward adds the elementwise work (softmax, LayerNorm, GELU)."""
  abstract = nnx.eval_shape(lambda: create_model("deit_tiny_distilled_patch16_224"))
  model_def = ts.ModelDef.of(abstract)

  def forward(params, rest, x):
    model = model_def.merge(params, rest)
    model.eval()
    return model(x)

  lowered = jax.jit(forward).lower(nnx.to_pure_dict(model_def.params_template),
                                   nnx.to_pure_dict(model_def.rest_template),
                                   jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = benchmark.analytic_forward_flops(abstract.config)
  assert cost["flops"] == pytest.approx(analytic, rel=0.08)
  assert benchmark.analytic_forward_flops(
      nnx.eval_shape(lambda: create_model("cifar_resnet20")).config) is None


def test_peak_table():
  class Dev:
    platform = "tpu"

    def __init__(self, kind):
      self.device_kind = kind

  for kind, peak in [("TPU v3", 123), ("TPU v4", 275), ("TPU v5 lite", 197), ("TPU v5p", 459),
                     ("TPU v5", 459), ("TPU v6 lite", 918), ("NVIDIA A100-SXM4-80GB", 312),
                     ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H200", 989)]:
    assert benchmark.peak_tflops(Dev(kind), None)[0] == peak, kind
  assert benchmark.peak_tflops(Dev("TPU v4"), 5.0) == (5.0, "--peak_tflops")
  with pytest.raises(benchmark.BenchError, match="--peak_tflops"):
    benchmark.peak_tflops(Dev("Mystery accelerator"), None)


@pytest.mark.parametrize("args,message", [
    (["--model", "deit_nope", "--batch_size", "4"], "unknown model"),
    (["--model", MODEL, "--batch_size", "4", "--dtype", "float16"], "--dtype"),
    (["--model", MODEL, "--batch_size", "4", "--mesh", "data=2"], "needs 2 devices"),
])
def test_bad_input_is_one_line_exit_2(args, message):
  proc = _cli(*args, timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
      proc.stderr
  assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bad_input_in_process():
  assert benchmark.run(["--model", MODEL, "--batch_size", "4", "--override", "depth"]) == 2
  assert benchmark.run(["--model", "cifar_resnet20", "--batch_size", "4", "--vs_timm"]) == 2
  with pytest.raises(benchmark.BenchError, match="--dtype"):
    benchmark.main(["--model", MODEL, "--batch_size", "4", "--override", "dtype=bfloat16"])
  for argv, message in [(["--batch_size", "many"], "'auto'"),
                        (["--batch_size", "auto", "--batch_sizes", "2,x"], "--batch_sizes"),
                        (["--batch_size", "4", "--batch_sizes", "2,4"], "needs --batch_size=auto"),
                        (["--batch_size", "auto", "--batch_sizes", "0,2"], ">= 1"),
                        (["--batch_size", "4", "--timm_compile"], "needs --vs_timm"),
                        (["--batch_size", "4", "--attn_impl", "flash"], "--attn_impl"),
                        (["--batch_size", "4", "--attn_impl", "xla", "--override",
                          "attn_impl=xla"], "not both"),
                        (["--batch_size", "4", "--attn_impl", "cudnn", "--override",
                          "attn_drop_rate=0.1"], "attn_drop_rate")]:
    with pytest.raises(benchmark.BenchError, match=message):
      benchmark.main(["--model", MODEL, *argv])
  with pytest.raises(benchmark.BenchError, match="no attention"):
    benchmark.main(["--model", "cifar_resnet20", "--batch_size", "4", "--attn_impl", "xla"])


def test_batch_size_auto_sweep(capsys, monkeypatch):
  """--batch_size auto on CPU: a sweep of both sizes, the fastest reported; --attn_impl cudnn
  (no cuDNN here) falls back to dot_product with a note. With timm installed, also the
  one-GPU path: our side in a child process (the CLI), timm here at the size it picked."""
  with_timm = importlib.util.find_spec("timm") is not None
  argv = ["--model", MODEL, "--batch_size", "auto", "--batch_sizes", "4,2", "--mode", "infer",
          "--steps", "2", "--warmup", "1", "--json", "--peak_tflops", "0.1", "--attn_impl",
          "cudnn", *TINY, *(["--vs_timm", "--jax_in_child"] if with_timm else [])]
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # for the child
  result = benchmark.main(argv)
  stdout = capsys.readouterr().out
  assert json.loads(stdout.strip().splitlines()[-1]) == json.loads(json.dumps(result))
  assert [e["batch_size"] for e in result["sweep"]] == [2, 4]
  best = max(result["sweep"], key=lambda e: e["images_per_sec"])
  assert result["batch_size"] == best["batch_size"]
  assert result["images_per_sec"] == best["images_per_sec"] and result["sweep_stopped"] is None
  assert result["attn_impl"] == "dot_product" and "falling back to 'dot_product'" in stdout
  assert stdout.count("  sweep  batch ") == 2 and "the fastest of 2,4" in stdout
  if with_timm:
    assert result["timm_batch_size"] == result["batch_size"] and result["timm_images_per_sec"] > 0
    # (tensorflow_imported is not checked here: other test modules import TF into this
    # process; test_no_tensorflow_on_the_benchmark_path checks it in a clean one.)
    assert not result["timm_compiled"]


def test_attn_impl_dot_product():
  """--attn_impl dot_product is used and reported."""
  proc = _cli("--model", MODEL, "--batch_size", "4", "--mode", "infer", "--steps", "2",
              "--warmup", "1", "--json", "--peak_tflops", "0.1", "--attn_impl", "dot_product",
              *TINY, timeout=400)
  result = _json(proc)
  assert result["attn_impl"] == "dot_product" and "attention dot_product" in proc.stdout
  assert result["images_per_sec"] > 0 and "sweep" not in result


@pytest.mark.slow  # torch.compile builds C++ for minutes; --vs_timm itself: test_cli_json_vs_timm
def test_timm_compile():
  """--timm_compile runs timm's model under torch.compile (on CPU that needs a C++
  compiler); our JSON line is printed once more before timm runs, in case it never ends."""
  if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
    pytest.skip("--timm_compile needs a C++ compiler for torch.compile on CPU")
  proc = _cli("--model", MODEL, "--batch_size", "4", "--mode", "infer", "--steps", "2",
              "--warmup", "1", "--json", "--peak_tflops", "0.1", *TINY, "--vs_timm",
              "--timm_compile", timeout=900)
  result = _json(proc)
  assert result["timm_compiled"] is True and result["timm_images_per_sec"] > 0
  assert result["timm_batch_size"] == 4 and "torch.compile" in proc.stdout
  first = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][0])
  assert "timm_images_per_sec" not in first and first["images_per_sec"] > 0


def test_gpu_benchmark_dry_run(tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run(["bash", os.path.join(ROOT, "launch", "gpu_benchmark.sh"),
                         "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, PYTHON="python3", OUT=str(out)))
  assert proc.returncode == 0, proc.stderr
  commands = [line for line in proc.stdout.splitlines()
              if "-m deit_jax.bench.benchmark" in line]
  assert len(commands) == 4, proc.stdout
  cases = set()
  for line in commands:
    words = line.split()
    for flag in ("--vs_timm", "--timm_compile", "--json"):
      assert flag in words, line
    assert words[words.index("--dtype") + 1] == "bfloat16"
    assert words[words.index("--batch_size") + 1] == "auto"
    assert words[0] == "timeout" and "python3" in words
    cases.add((words[words.index("--model") + 1], words[words.index("--mode") + 1]))
  assert cases == {(m, mode) for m in ("deit_small_distilled_patch16_224",
                                       "deit_base_distilled_patch16_224")
                   for mode in ("train", "infer")}
  assert not out.exists()  # prints, runs nothing


def test_sweep_stops_at_out_of_memory(monkeypatch, capsys):
  """The sweep's bookkeeping, with a fake step: sizes in ascending order, the fastest one
  wins, the first RESOURCE_EXHAUSTED ends it, and out of memory at the first size is an
  error; timm halves its batch on CUDA out-of-memory."""
  speeds = {2: 100.0, 4: 300.0, 8: 200.0}

  def fake(args, b, impl, overrides, mesh, peak):
    if b not in speeds:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                       "allocate 123 bytes.")
    return {"batch_size": b, "images_per_sec": speeds[b], "step_ms": 1.0, "compile_s": 0.1}, impl

  monkeypatch.setattr(benchmark, "_bench_jax", fake)
  args = benchmark.parse_args(["--model", MODEL, "--batch_size", "auto", "--batch_sizes",
                               "16,8,2,4,32"])
  result = benchmark._sweep(args, "xla", {}, None, None)
  assert result["batch_size"] == 4 and result["images_per_sec"] == 300.0
  assert [e["batch_size"] for e in result["sweep"]] == [2, 4, 8]
  assert result["sweep_stopped"] == "out of memory at batch 16"
  assert "batch 16     out of memory" in capsys.readouterr().out
  args = benchmark.parse_args(["--model", MODEL, "--batch_size", "auto", "--batch_sizes", "1"])
  with pytest.raises(benchmark.BenchError, match="out of memory already at batch size 1"):
    benchmark._sweep(args, "xla", {}, None, None)

  torch = pytest.importorskip("torch")
  from deit_jax.bench import vs_timm as benchmark_timm
  tried = []

  def fake_run(name, overrides, mode, dtype, b, *rest):
    tried.append(b)
    if b > 2:
      raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return 0.5, 1.0

  monkeypatch.setattr(benchmark_timm, "_run", fake_run)
  r = benchmark_timm.bench_timm(MODEL, {}, mode="infer", dtype="float32", batch_size=8,
                                warmup=1, steps=1, distilled=True, halve_on_oom=True)
  assert tried == [8, 4, 2] and r["timm_batch_size"] == 2 and r["timm_images_per_sec"] == 4.0
  with pytest.raises(torch.cuda.OutOfMemoryError):
    benchmark_timm.bench_timm(MODEL, {}, mode="infer", dtype="float32", batch_size=8,
                              warmup=1, steps=1, distilled=True)


def test_time_steps_dispatches_back_to_back():
  """Timed steps run as the trainer runs them: no wait between dispatches, one sync per
  window (and one per warm-up step), and the mean is over every timed step."""
  from deit_jax.bench.vs_timm import time_steps  # pylint: disable=import-outside-toplevel
  calls = []
  mean, windows = time_steps(lambda: calls.append("d"), lambda: calls.append("s"),
                             warmup=2, steps=7)
  assert "".join(calls) == "dsds" + "dddds" + "ddds"
  assert len(windows) == 2 and mean >= 0
  calls.clear()
  _, windows = time_steps(lambda: calls.append("d"), lambda: calls.append("s"), 0, 1)
  assert "".join(calls) == "ds" and len(windows) == 1


def test_online_teacher_runs_in_the_train_step():
  result = benchmark.main(["--model", MODEL, *TINY, "--batch_size", "4", "--steps", "1",
                           "--warmup", "0", "--peak_tflops", "0.1",
                           "--online_teacher", "cifar_resnet8"])
  assert result["online_teacher"] == "cifar_resnet8" and jnp.isfinite(result["final_loss"])
  with pytest.raises(benchmark.BenchError, match="--online_teacher times the train step"):
    benchmark.main(["--model", MODEL, "--batch_size", "4", "--mode", "infer",
                    "--online_teacher", "regnety_160"])
  with pytest.raises(benchmark.BenchError, match="unknown model 'regnety_16'"):
    benchmark.main(["--model", MODEL, "--batch_size", "4", "--online_teacher", "regnety_16"])


def test_teacher_precompute_benchmark_runs_and_refuses_bad_input():
  from deit_jax.bench import teacher_precompute  # pylint: disable=import-outside-toplevel
  result = teacher_precompute.main(["--model=regnety_002", "--batch_size=2", "--img_size=32",
                                    "--num_classes=3", "--dtypes=float32", "--rounds=1",
                                    "--batches=1", "--no_timm"])
  assert set(result["images_per_sec"]) == {"jax_float32"}
  assert result["images_per_sec"]["jax_float32"] > 0
  assert teacher_precompute.run(["--rounds=0"]) == 2
