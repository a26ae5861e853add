"""The command line of ``python -m deit_jax.bench.benchmark``: absl flags, parsed into
fresh FlagValues on every call (the benchmark is also called in-process) and checked into
an ``Options`` value that the benchmark passes around instead of a namespace.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from deit_jax import cli
from deit_jax.errors import BenchError, UserError

_PROG = "python -m deit_jax.bench.benchmark"
_EPILOG = """\
MFU = model FLOPs per second / (peak x devices). The peak is the chip's dense bf16
TFLOP/s from a built-in table (TPU v3/v4/v5e/v5p/v6e, A100, H100/H200), whatever --dtype
is: the usual convention. For --dtype float32 on GPU, JAX's default TF32 matmuls peak at
half that (on TPU fp32 matmuls run as bf16 passes by default), so double the MFU shown
or pass --peak_tflops. On CPU the peak is measured with a float32 2048x2048 matmul probe.
"""


@dataclasses.dataclass(frozen=True)
class Options:
  """The command line, parsed and checked (see ``_define_flags``)."""

  model: str
  batch_size: int | None          # None with --batch_size=auto
  auto: bool
  batch_sizes: list[int]
  sweep_budget: float | None
  mode: str
  dtype: str
  steps: int
  warmup: int
  mesh: str
  override: list[str]
  json: bool
  attn_impl: str | None
  vs_timm: bool
  timm_compile: bool
  jax_in_child: bool
  peak_tflops: float | None


def _define_flags(fv: flags.FlagValues) -> None:
  d = dict(flag_values=fv)
  flags.DEFINE_string("model", None, "registered model name (timm's names)", **d)
  flags.DEFINE_string("batch_size", None, "global batch size, or 'auto': the fastest of "
                      "--batch_sizes, tried in ascending order up to the first out-of-memory",
                      **d)
  flags.DEFINE_string("batch_sizes", None, "B1,B2,...: sizes --batch_size=auto tries (train "
                      "64,...,1024; infer 128,...,2048)", **d)
  flags.DEFINE_float("sweep_budget", None, "--batch_size=auto: start no further size after "
                     "this many seconds", **d)
  flags.DEFINE_enum("mode", "train", ["train", "infer"], "time the train step or inference",
                    **d)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "compute dtype (master weights stay float32)", **d)
  flags.DEFINE_integer("steps", None, "timed steps, run back to back in two windows (20 "
                       "train, 40 infer)", **d)
  flags.DEFINE_integer("warmup", 2, "untimed steps after compilation", **d)
  flags.DEFINE_string("mesh", "data=-1,fsdp=1,tensor=1", "mesh axis sizes", **d)
  flags.DEFINE_multi_string("override", [], "KEY=VALUE model config override, repeatable "
                            "(e.g. depth=1)", **d)
  flags.DEFINE_bool("json", False, "print one JSON object as the last line", **d)
  flags.DEFINE_enum("attn_impl", None, ["xla", "dot_product", "cudnn"],
                    "attention of ViT/DeiT models (default: cudnn, i.e. flash attention, on "
                    "GPU in bfloat16, else xla); cudnn falls back to dot_product if it fails "
                    "to build", **d)
  flags.DEFINE_bool("vs_timm", False, "also time timm's model (PyTorch) on the same batch "
                    "and dtype", **d)
  flags.DEFINE_bool("timm_compile", False, "with --vs_timm: wrap timm's model in "
                    "torch.compile (the first warm-up step compiles)", **d)
  flags.DEFINE_bool("jax_in_child", False, "with --vs_timm: run our side in a child "
                    "process even off GPU (for tests)", **d)
  flags.DEFINE_float("peak_tflops", None, "peak TFLOP/s per device for MFU (default: table "
                     "/ CPU probe)", **d)


def parse_args(argv: list[str]) -> Options:
  """``argv`` (without the program name) -> Options; BenchError on bad input."""
  try:
    fv, rest = cli.parse_argv(_define_flags, argv, _PROG, _EPILOG)
  except UserError as e:
    raise BenchError(str(e)) from None
  if rest:
    raise BenchError(f"unexpected arguments: {' '.join(rest)}")
  if not fv.model or not fv.batch_size:
    raise BenchError("--model and --batch_size are required")
  auto = fv.batch_size == "auto"
  try:
    sizes = [int(b) for b in (fv.batch_sizes.split(",") if auto and fv.batch_sizes
                              else [] if auto else [fv.batch_size])]
  except ValueError:
    raise BenchError("--batch_size must be an integer or 'auto', --batch_sizes integers "
                     "separated by commas") from None
  if fv.batch_sizes is not None and not auto:
    raise BenchError("--batch_sizes needs --batch_size=auto")
  if (fv.timm_compile or fv.jax_in_child) and not fv.vs_timm:
    raise BenchError("--timm_compile needs --vs_timm")
  batch_sizes = sorted(set(sizes)) or (
      [64, 128, 256, 512, 1024] if fv.mode == "train" else [128, 256, 512, 1024, 2048])
  if min(batch_sizes) < 1 or fv.warmup < 0 or (fv.steps is not None and fv.steps < 1):
    raise BenchError("--batch_size and --steps must be >= 1, --warmup >= 0")
  if fv.peak_tflops is not None and fv.peak_tflops <= 0:
    raise BenchError("--peak_tflops must be positive")
  return Options(
      model=fv.model, batch_size=None if auto else batch_sizes[0], auto=auto,
      batch_sizes=batch_sizes, sweep_budget=fv.sweep_budget, mode=fv.mode, dtype=fv.dtype,
      steps=fv.steps or (20 if fv.mode == "train" else 40), warmup=fv.warmup, mesh=fv.mesh,
      override=list(fv.override), json=fv.json, attn_impl=fv.attn_impl, vs_timm=fv.vs_timm,
      timm_compile=fv.timm_compile, jax_in_child=fv.jax_in_child,
      peak_tflops=fv.peak_tflops)


def child_argv(args: Options) -> list[str]:
  """The command line of our side run in a child process (``--vs_timm`` on one GPU)."""
  argv = [f"--model={args.model}", "--batch_size=auto", f"--mode={args.mode}",
          f"--batch_sizes={','.join(map(str, args.batch_sizes))}", f"--dtype={args.dtype}",
          f"--steps={args.steps}", f"--warmup={args.warmup}", f"--mesh={args.mesh}", "--json"]
  argv += [f"--override={item}" for item in args.override]
  for flag, value in (("peak_tflops", args.peak_tflops), ("attn_impl", args.attn_impl),
                      ("sweep_budget", args.sweep_budget)):
    if value is not None:
      argv.append(f"--{flag}={value}")
  return argv
