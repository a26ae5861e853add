"""The paper's distillation ablation on Fashion-MNIST: every run, resumable, then a table
(mean +- spread over seeds) and a PNG of the training curves.

    .venv/bin/python launch/reproduce_fashion_mnist.py --workdir=workdirs/reproduce \
        [--seeds=0,1] [--only=none,hard] [--report_only] [--set=data_dir=...] \
        [--figure=docs/fashion_mnist.png] [--steps=N --teacher_from=workdirs/reproduce]

Runs (same student architecture and budget: configs/fashion_mnist_deit_tiny*.py, 1,200
steps; the teacher is configs/fashion_mnist_resnet_teacher.py:full):

  none          plain DeiT student, no distillation
  soft          soft distillation, the official code's setting (tau 1, alpha 0.5)
  soft_paper    soft distillation, the paper's setting (T 3, lambda 0.1)
  hard          hard distillation from per-image precomputed CNN logits
  hard_views    hard distillation from crop-consistent precomputed logits (4 views/image)
  hard_online   hard distillation from the CNN run online on the same augmented batch
  hard_vit      hard distillation from a transformer teacher (the `none` run of seed 0)

Each step is one of the project's commands (deit_jax.main / teacher / evaluate) run as a
subprocess; a finished run is not repeated, an interrupted one resumes from its
checkpoints, so the script can be stopped and restarted at any time (e.g. across
sessions). Results land in <workdir>/results/*.json; the report goes to stdout,
<workdir>/table.md and <workdir>/fashion_mnist.png (training curves, accuracies, the
table; needs matplotlib), and --figure copies the PNG. --steps gives every student another
budget (the teacher keeps its own); --teacher_from reuses the CNN teacher and its logits of
another workdir instead of training them again (e.g. a longer none-vs-hard pair:
--workdir=workdirs/reproduce_2400 --steps=2400 --only=none,hard --seeds=0
--teacher_from=workdirs/reproduce). A workdir keeps the budget it started with.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

PLAIN = "configs/fashion_mnist_deit_tiny.py"
STUDENT = "configs/fashion_mnist_deit_tiny_distilled.py:full"
TEACHER = "configs/fashion_mnist_resnet_teacher.py:full"
VARIANTS = {  # in the order they run (seed 0 of every variant first)
    "none": (PLAIN, []),
    "hard": (STUDENT, []),
    "hard_views": (STUDENT, []),
    "hard_online": (STUDENT, []),
    "soft": (STUDENT, ["distill.type=soft", "distill.alpha=0.5", "distill.tau=1.0"]),
    "soft_paper": (STUDENT, ["distill.type=soft", "distill.alpha=0.1", "distill.tau=3.0"]),
    "hard_vit": (STUDENT, []),
}


def _run(args, log):
  command = [sys.executable, "-m", *args]
  print("  $", " ".join(command), flush=True)
  with open(log, "a") as f:
    code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT)
  if code:
    sys.exit(f"failed (exit {code}); see {log}")


def _evaluate(work, name, config, checkpoint, common, teacher_logits=None):
  out = os.path.join(work, "results", f"{name}.json")
  if os.path.exists(out):
    return json.load(open(out))
  args = ["deit_jax.evaluate", f"--config={config}", f"--checkpoint={checkpoint}", "--json",
          *common] + ([f"--teacher_logits={teacher_logits}"] if teacher_logits else [])
  result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
  if result.returncode:
    sys.exit(f"evaluation of {name} failed: {result.stderr[-500:]}")
  value = json.loads(result.stdout.strip().splitlines()[-1])
  json.dump(value, open(out, "w"), indent=2, sort_keys=True)
  return value


def _check_budget(work, steps):
  """One student budget per workdir: a different --steps would extend finished runs and
  keep their old results."""
  path = os.path.join(work, "budget.json")
  if os.path.exists(path):
    before = json.load(open(path))["steps"]
    if before != steps:
      sys.exit(f"error: {work} holds runs with --steps={before}, not {steps}: "
               "use another --workdir")
  else:
    json.dump({"steps": steps}, open(path, "w"))


def run_all(work, seeds, only, common, steps=0, teacher_from=""):
  os.makedirs(os.path.join(work, "results"), exist_ok=True)
  _check_budget(work, steps)
  log = os.path.join(work, "log.txt")
  home = teacher_from or work  # where the teacher and its logits live
  teacher = os.path.join(home, "teacher_cnn")
  logits = {s: os.path.join(home, "logits", s) for s in ("train", "test", "views")}
  if teacher_from:
    missing = [p for p in (teacher, *logits.values()) if not os.path.isdir(p)]
    if missing:
      sys.exit(f"error: --teacher_from={teacher_from} has no {missing[0]}: run the script "
               f"with --workdir={teacher_from} first")
    evaluated = os.path.join(home, "results", "teacher_cnn.json")
    if os.path.exists(evaluated):  # the teacher's evaluation too, rather than a second one
      shutil.copyfile(evaluated, os.path.join(work, "results", "teacher_cnn.json"))
  else:
    print("teacher (CNN)", flush=True)
    _run(["deit_jax.main", f"--config={TEACHER}", f"--workdir={teacher}", *common], log)
    for split, extra in (("train", []), ("test", ["--split=test"]), ("views", ["--views=4"])):
      _run(["deit_jax.teacher", "precompute", f"--config={TEACHER}", f"--checkpoint={teacher}",
            f"--out={logits[split]}", "--storage=full", *extra, *common], log)
  _evaluate(work, "teacher_cnn", TEACHER, teacher, common, logits["test"])
  for seed in seeds:
    for name, (config, overrides) in VARIANTS.items():
      if only and name not in only:
        continue
      run = os.path.join(work, f"{name}_s{seed}")
      sets = [f"--config.{o}" for o in overrides] + [f"--config.seed={seed}"] + (
          [f"--config.total_steps={steps}"] if steps else [])
      if name == "hard_vit":
        vit_teacher = os.path.join(work, "none_s0")
        vit_logits = os.path.join(work, "logits", "vit_train")
        _run(["deit_jax.teacher", "precompute", f"--config={PLAIN}",
              f"--checkpoint={vit_teacher}", f"--out={vit_logits}", "--storage=full",
              *common], log)
        sets.append(f"--config.distill.teacher_logits={vit_logits}")
      elif name == "hard_online":
        sets.append(f"--config.distill.teacher={teacher}")
      elif name == "hard_views":
        sets.append(f"--config.distill.teacher_logits={logits['views']}")
      elif name != "none":
        sets.append(f"--config.distill.teacher_logits={logits['train']}")
      print(f"{name} seed {seed}", flush=True)
      _run(["deit_jax.main", f"--config={config}", f"--workdir={run}", *sets, *common], log)
      _evaluate(work, f"{name}_s{seed}", config, run, common, logits["test"])


def _group(results):
  """{variant: [result of each seed]} in VARIANTS order."""
  groups = {name: [v for k, v in sorted(results.items()) if k.rsplit("_s", 1)[0] == name]
            for name in VARIANTS}
  return {name: runs for name, runs in groups.items() if runs}


def _stats(runs, key):
  """Mean and half-range over seeds."""
  values = [r[key] for r in runs]
  return np.mean(values), (np.max(values) - np.min(values)) / 2


def _cell(runs, key):
  return "{:.2f} +- {:.2f}".format(*_stats(runs, key))


def report(work, figure=None):
  results = {}
  for file in sorted(os.listdir(os.path.join(work, "results"))):
    results[file[:-5]] = json.load(open(os.path.join(work, "results", file)))
  rows = []
  if "teacher_cnn" in results:
    rows.append(["CNN teacher (cifar_resnet20)", "1", f"{results['teacher_cnn']['top1']:.2f}",
                 "", "", ""])
  groups = _group(results)
  for name, runs in groups.items():
    plain = name == "none"
    rows.append([name, str(len(runs)), _cell(runs, "top1"),
                 "" if plain else _cell(runs, "top1_cls"),
                 "" if plain else _cell(runs, "top1_dist"), _cell(runs, "agreement")])
  header = ["run", "seeds", "top-1 avg (%)", "cls head", "dist head", "agreement w/ CNN"]
  table = "\n".join(["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] +
                     ["| " + " | ".join(r) + " |" for r in rows])
  print(table)
  with open(os.path.join(work, "table.md"), "w") as f:
    f.write(table + "\n")
  _plot(work, results, groups, header, rows, figure)


def _plot(work, results, groups, header, rows, figure):
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("(no matplotlib: `bash launch/setup.sh plots` for the PNG)")
    return
  fig = plt.figure(figsize=(14, 4.6 + 0.3 * len(rows)))
  grid = fig.add_gridspec(2, 2, height_ratios=[4, 0.8 + 0.3 * len(rows)])
  ax, bx = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
  for run in sorted(os.listdir(work)):
    metrics = os.path.join(work, run, "metrics.jsonl")
    if not os.path.exists(metrics) or not run.endswith("_s0"):
      continue
    train = [r for r in map(json.loads, open(metrics)) if "loss_base" in r]
    ax.plot([r["step"] for r in train], [r["loss_base"] for r in train], label=run[:-3])
  ax.set(xlabel="step", ylabel="cross-entropy with the labels (seed 0)",
         title="Fashion-MNIST students: training curves")
  if ax.lines:
    ax.legend(fontsize=8)
  names = list(groups)[::-1]
  means, spread = (list(v) for v in zip(*(_stats(groups[n], "top1") for n in names)))
  bx.barh(names, means, xerr=spread, color="tab:blue", capsize=3)
  if "teacher_cnn" in results:
    bx.axvline(results["teacher_cnn"]["top1"], color="tab:red", ls="--", label="CNN teacher")
    bx.legend(fontsize=8, loc="lower right")
  bx.set(xlabel="test top-1 (%), mean +- half-range over seeds",
         xlim=(min(means + [100]) - 3, 100), title="Test accuracy (10,000 images)")
  tx = fig.add_subplot(grid[1, :])
  tx.axis("off")
  if rows:
    tab = tx.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    tab.scale(1, 1.3)
  fig.tight_layout()
  out = os.path.join(work, "fashion_mnist.png")
  fig.savefig(out, dpi=100)
  print(f"wrote {out}")
  if figure:
    try:
      os.makedirs(os.path.dirname(figure) or ".", exist_ok=True)
      shutil.copyfile(out, figure)
    except OSError as e:
      sys.exit(f"error: cannot write --figure={figure}: {e.strerror or e}")
    print(f"wrote {figure}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--only", default="", help="comma-separated variants")
  parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--steps", type=int, default=0,
                      help="train steps of every student (default: the configs' 1,200)")
  parser.add_argument("--teacher_from", default="", help="workdir whose CNN teacher and "
                      "logits to reuse (default: train them in --workdir)")
  parser.add_argument("--figure", default="", help="also write the PNG here "
                      "(docs/reproduction.md shows docs/fashion_mnist.png)")
  args = parser.parse_args()
  unknown = set(filter(None, args.only.split(","))) - set(VARIANTS)
  if unknown:
    parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
  if args.steps < 0:
    parser.error("--steps must be positive (0: the configs' budget)")
  if not args.report_only:
    run_all(args.workdir, [int(s) for s in args.seeds.split(",")],
            set(filter(None, args.only.split(","))), [f"--config.{s}" for s in args.set],
            args.steps, args.teacher_from)
  report(args.workdir, args.figure)


if __name__ == "__main__":
  main()
