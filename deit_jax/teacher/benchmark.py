"""Teacher precompute speed: our JAX teacher vs the timm PyTorch one, side by side.

    python -m deit_jax.teacher.benchmark --model regnety_160 --batch-size 32 \
        [--img-size 224] [--dtypes float32,bfloat16] [--rounds 3] [--batches 2]

Times the two ``logits_fn`` that ``python -m deit_jax.teacher precompute`` runs per batch
(``--checkpoint`` -> ``precompute.jax_logits_fn``, batch split over the local devices;
``--timm`` -> ``torch_teacher.timm_logits_fn``) on the same random normalised images,
random weights. The input pipeline, identical for both, is not included. JAX and timm
alternate for ``--rounds`` rounds of ``--batches`` batches each and the best round of each
is reported, so that load from other processes on a shared machine skews the ratio less.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _best_rate(logits_fn, images: np.ndarray, batches: int) -> float:
  start = time.perf_counter()
  for _ in range(batches):
    logits_fn(images)
  return batches * len(images) / (time.perf_counter() - start)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(prog="python -m deit_jax.teacher.benchmark",
                              description=__doc__.split("\n")[0])
  p.add_argument("--model", default="regnety_160", help="registry name that timm also has")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--img-size", type=int, default=224)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--dtypes", default="float32,bfloat16", help="JAX compute dtypes to time")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--batches", type=int, default=2, help="batches per timed round")
  p.add_argument("--no-timm", action="store_true")
  args = p.parse_args(argv)

  import jax
  from deit_jax.models import create_model
  from deit_jax.teacher.precompute import jax_logits_fn

  images = np.random.default_rng(0).standard_normal(
      (args.batch_size, args.img_size, args.img_size, 3), np.float32)
  fns = {}
  for dtype in args.dtypes.split(","):
    model = create_model(args.model, num_classes=args.num_classes, dtype=dtype)
    model.eval()
    fns[f"jax_{dtype}"] = jax_logits_fn(model, args.batch_size)
  if not args.no_timm:
    from deit_jax.teacher.torch_teacher import timm_logits_fn
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
    import torch
    result["torch_threads"] = torch.get_num_threads()
    result["ratio_vs_timm_fp32"] = {k: v / rates["timm_float32"] for k, v in rates.items()
                                    if k.startswith("jax_")}
  for name, rate in rates.items():
    ratio = result.get("ratio_vs_timm_fp32", {}).get(name)
    print(f"{name:>14}: {rate:8.1f} img/s" + (f"  ({ratio:.2f}x timm fp32)" if ratio else ""))
  print(json.dumps(result, sort_keys=True))
  return result


if __name__ == "__main__":
  main()
