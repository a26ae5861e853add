"""The TPU table of docs/tpu.md: each recipe config x each TPU slice, compiled on this
machine by ``deit_jax.bench.pod_compile`` (the train step's per-chip HBM at the recipe
batch, the largest per-chip batch with and without remat, ESTIMATED step time and MFU),
and what each host must feed at that rate: images/s, the cores the full augmentation needs
at its measured rate per CPU-second (``--input_images_per_cpu_s``, docs/performance.md),
and the MB/s its records would take from a bucket (ImageNet's mean JPEG, ~110 KB).

    python -m deit_jax.bench.pod_table [--cache=pod_table.jsonl] [--search=false]
        [--configs=configs/deit_tiny.py,...] [--topologies=v4-32,v5e-64,v5p-128]

Every cell is several compiles of a CPU minute or more; finished cells are appended to
``--cache`` and reused when the command runs again, so an interrupted run resumes. The
Markdown table is printed at the end (cells not computed yet show as "...").
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from absl import flags

from deit_jax.bench import pod_compile

CHIPS_PER_HOST = 4  # as the compiles assume (pod_compile: chips_per_host_bounds (2, 2, 1))
MEAN_RECORD_BYTES = 110e3  # ImageNet's mean training JPEG
CONFIGS = ("configs/deit_tiny.py", "configs/deit_small.py", "configs/deit_base.py",
           "configs/deit_base_384_finetune.py")
TOPOLOGIES = ("v4-32", "v5e-64", "v5p-128")


def load_config(path: str):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def one_compile_largest_batch(train: dict, per_chip: float) -> float:
  """The largest per-chip batch if every temporary grew with the batch (some do not, so
  the real one is at least this): capacity less the fixed bytes, over the bytes per image."""
  m = train["memory_bytes"]
  varying = m["temporaries"] + m["of_arguments_batch"]
  return (train["capacity_bytes"] - (m["total"] - varying)) / (varying / per_chip)


def _cell(r: dict | None, images_per_cpu_s: float) -> list[str]:
  if r is None:
    return ["..."] * 10
  train = r["steps"]["train"]
  if "memory_bytes" not in train:
    memory = "does not fit"
  else:
    m = train["memory_bytes"]["total"]
    memory = f"{m / pod_compile.GIB:.1f} GiB ({100 * m / train['capacity_bytes']:.0f}%)"
  largest = {s["remat"]: s["largest_per_chip_batch"] for s in r["search"]}
  if largest:
    fmt = lambda k: str(largest[k]) if k in largest else "-"
    batches = f"{fmt(False)} / {fmt(True)}"
  elif "memory_bytes" in train:  # no search: one compile's guess, configured remat
    batches = (f"≈{one_compile_largest_batch(train, r['batch_size'] / r['chips']):.0f} "
               f"({'remat' if r['remat'] else 'no remat'}, one compile)")
  else:
    batches = "-"
  step = train.get("estimated_step_s")
  hosts = max(1, r["chips"] // CHIPS_PER_HOST)
  per_host = train["estimated_images_per_s"] / hosts if step else None
  return [f"{r['batch_size']} ({r['batch_size'] // r['chips']})", memory, batches,
          f"{1e3 * step:.0f} ms" if step else "-",
          f"{train['estimated_images_per_s']:,.0f}" if step else "-",
          f"{100 * train['estimated_mfu']:.0f}%" if step else "-", str(hosts),
          f"{per_host:,.0f}" if step else "-",
          f"{per_host / images_per_cpu_s:.0f}" if step else "-",
          f"{per_host * MEAN_RECORD_BYTES / 1e6:,.0f}" if step else "-"]


def table(results: dict, images_per_cpu_s: float = 182.0) -> str:
  head = ["model", "slice", "batch (per chip)", "HBM per chip at that batch",
          "largest batch per chip (no remat / remat)", "est. step", "est. images/s",
          "est. MFU", "hosts", "images/s per host", "input cores per host",
          "MB/s per host from a bucket"]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for (path, topology), r in results.items():
    model = r["model"] if r else os.path.basename(path)
    rows.append("| " + " | ".join([model, topology] + _cell(r, images_per_cpu_s)) + " |")
  return "\n".join(rows)


def main(argv=None) -> int:
  flags.DEFINE_string("cache", "pod_table.jsonl", "JSON lines of finished cells (resumed)")
  flags.DEFINE_list("configs", list(CONFIGS), "config files (rows)")
  flags.DEFINE_list("topologies", list(TOPOLOGIES), "Cloud TPU accelerator types (columns)")
  flags.DEFINE_bool("search", True, "search the largest batch (most of the compiles)")
  flags.DEFINE_float("input_images_per_cpu_s", 182.0, "the full train augmentation's rate "
                     "per CPU-second (measured: docs/performance.md, 'Host input')")
  FLAGS = flags.FLAGS
  FLAGS(argv or sys.argv)
  done = {}
  if os.path.exists(FLAGS.cache):
    with open(FLAGS.cache) as f:
      for line in f:
        entry = json.loads(line)
        done[(entry["config"], entry["topology"])] = entry["result"]
  results = {(c, t): done.get((c, t)) for c in FLAGS.configs for t in FLAGS.topologies}
  for (path, topology), r in results.items():
    if r is not None:
      continue
    print(f"== {path} on {topology}", flush=True)
    r = pod_compile.check(load_config(path), topology, search=FLAGS.search, which=("train",),
                          log=lambda line: print(line, flush=True))
    print(pod_compile.report(r), flush=True)
    results[(path, topology)] = r
    with open(FLAGS.cache, "a") as f:
      f.write(json.dumps({"config": path, "topology": topology, "result": r}) + "\n")
  print(table(results, FLAGS.input_images_per_cpu_s), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
