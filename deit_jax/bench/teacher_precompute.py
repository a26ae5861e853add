"""Teacher precompute speed: our JAX teacher vs the timm PyTorch one, side by side.

    python -m deit_jax.bench.teacher_precompute --model=regnety_160 --batch_size=32 \
        [--img_size=224] [--dtypes=float32,bfloat16] [--rounds=3] [--batches=2] [--no_timm]

Times the two ``logits_fn`` that ``python -m deit_jax.teacher precompute`` runs per batch
(``--checkpoint`` -> ``precompute.jax_logits_fn``, batch split over the local devices;
``--timm`` -> ``torch_teacher.timm_logits_fn``) on the same random normalised images,
random weights. The input pipeline, identical for both, is not included. JAX and timm
alternate for ``--rounds`` rounds of ``--batches`` batches each and the best round of each
is reported, so that load from other processes on a shared machine skews the ratio less.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np
from absl import flags

from deit_jax import cli, torch_stack
from deit_jax.errors import UserError
from deit_jax.models import create_model
from deit_jax.teacher.precompute import jax_logits_fn
from deit_jax.teacher.torch_teacher import timm_logits_fn

_PROG = "python -m deit_jax.bench.teacher_precompute"


def _define_flags(fv: flags.FlagValues) -> None:
  d = dict(flag_values=fv)
  flags.DEFINE_string("model", "regnety_160", "registry name that timm also has", **d)
  flags.DEFINE_integer("batch_size", 32, "images per batch", **d)
  flags.DEFINE_integer("img_size", 224, "image side", **d)
  flags.DEFINE_integer("num_classes", 1000, "classes of the teacher's head", **d)
  flags.DEFINE_string("dtypes", "float32,bfloat16", "JAX compute dtypes to time", **d)
  flags.DEFINE_integer("rounds", 3, "alternating timed rounds (the best of each is kept)", **d)
  flags.DEFINE_integer("batches", 2, "batches per timed round", **d)
  flags.DEFINE_bool("no_timm", False, "time the JAX teacher only", **d)


def _best_rate(logits_fn, images: np.ndarray, batches: int) -> float:
  start = time.perf_counter()
  for _ in range(batches):
    logits_fn(images)
  return batches * len(images) / (time.perf_counter() - start)


def main(argv=None) -> dict:
  args, rest = cli.parse_argv(_define_flags, sys.argv[1:] if argv is None else argv, _PROG)
  if rest:
    raise UserError(f"unexpected arguments: {' '.join(rest)}")
  if min(args.batch_size, args.img_size, args.num_classes, args.rounds, args.batches) < 1:
    raise UserError("--batch_size, --img_size, --num_classes, --rounds and --batches must "
                    "be >= 1")
  images = np.random.default_rng(0).standard_normal(
      (args.batch_size, args.img_size, args.img_size, 3), np.float32)
  fns = {}
  for dtype in args.dtypes.split(","):
    model = create_model(args.model, num_classes=args.num_classes, dtype=dtype)
    model.eval()
    fns[f"jax_{dtype}"], fitted = jax_logits_fn(model, args.batch_size, images.shape[1:],
                                                log=lambda _: None)
    if fitted != args.batch_size:
      raise UserError(f"--batch_size={args.batch_size} does not fit the free memory of this "
                      f"machine with {args.model}: try --batch_size={fitted}")
  if not args.no_timm:
    fns["timm_float32"], _ = timm_logits_fn(args.model, None, num_classes=args.num_classes,
                                            in_chans=3, device="cpu")
  compile_s = {}
  for name, fn in fns.items():  # compile / first call, untimed
    start = time.perf_counter()
    fn(images)
    compile_s[name] = time.perf_counter() - start
  rates = {name: 0.0 for name in fns}
  for _ in range(args.rounds):
    for name, fn in fns.items():
      rates[name] = max(rates[name], _best_rate(fn, images, args.batches))
  result = {"model": args.model, "batch_size": args.batch_size, "img_size": args.img_size,
            "devices": f"{jax.local_device_count()} x {jax.local_devices()[0].device_kind}",
            "images_per_sec": rates, "first_call_s": compile_s}
  if "timm_float32" in rates:
    result["torch_threads"] = torch_stack.import_torch().get_num_threads()
    result["ratio_vs_timm_fp32"] = {k: v / rates["timm_float32"] for k, v in rates.items()
                                    if k.startswith("jax_")}
  for name, rate in rates.items():
    ratio = result.get("ratio_vs_timm_fp32", {}).get(name)
    print(f"{name:>14}: {rate:8.1f} img/s" + (f"  ({ratio:.2f}x timm fp32)" if ratio else ""))
  print(json.dumps(result, sort_keys=True))
  return result


def run(argv=None) -> int:
  """The CLI: 0, or 2 with one line ``error: ...`` on bad input."""
  try:
    main(argv)
  except cli.USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(run())
