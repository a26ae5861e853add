"""Does distillation hurt on small data? Every distillation setting against none on a
class-balanced subset of Fashion-MNIST train (default 150 images per class = 1,500), the
CNN teacher trained on the same subset; two seeds; a table with the spread.

    .venv/bin/python launch/small_data_distillation.py --workdir=workdirs/small_data \
        [--per_class=150] [--steps=500] [--seeds=0,1] [--only=none,hard,...] [--report_only]

Runs (students: configs/fashion_mnist_deit_tiny*.py, --steps steps of batch 128; teacher:
configs/fashion_mnist_resnet_teacher.py's 468 steps with cifar_resnet20 and pad-crop + flip,
on the same subset):

  none          plain DeiT student
  hard          hard distillation, per-image logits (eval transform), alpha 0.5
  hard_views    hard distillation, crop-consistent logits (4 stored views per image)
  hard_online   hard distillation, the CNN run online on the student's augmented batch
  soft          soft distillation, official setting (tau 1, alpha 0.5)
  soft_paper    soft distillation, the paper's setting (tau 3, lambda 0.1)
  hard_oracle   hard distillation from a perfect teacher (its logits are the ground truth):
                the limit of a teacher that is right on every training image
  hard_oracle_smooth   the same with the teacher's label smoothed (distill.hard_smoothing 0.1)
  hard_smooth   hard distillation, per-image logits, teacher's label smoothed (0.1)

Besides the accuracies, the table shows the teacher's accuracy on its own training
subset: where it is ~100%, its per-image hard labels repeat the ground truth and give the
distillation head nothing to learn but unsmoothed labels. Resumable like
launch/reproduce_fashion_mnist.py (same helpers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from reproduce_fashion_mnist import _run, _stats, write_oracle_logits

PLAIN = "configs/fashion_mnist_deit_tiny.py"
STUDENT = "configs/fashion_mnist_deit_tiny_distilled.py:full"
TEACHER = "configs/fashion_mnist_resnet_teacher.py"
# The teacher of the documented table: cifar_resnet20 with pad-crop + flip for 468 steps
# (40 epochs of the subset), pinned here because the config's quick variant changed since.
TEACHER_SETS = ["--config.model.name=cifar_resnet20", "--config.aug.pad=2",
                "--config.aug.hflip=True"]
VARIANTS = {  # in the order they run
    "none": (PLAIN, [], None),
    "hard": (STUDENT, [], "train"),
    "soft_paper": (STUDENT, ["distill.type=soft", "distill.alpha=0.1", "distill.tau=3.0"],
                   "train"),
    "hard_oracle": (STUDENT, [], "oracle"),
    "hard_oracle_smooth": (STUDENT, ["distill.hard_smoothing=0.1"], "oracle"),
    "hard_smooth": (STUDENT, ["distill.hard_smoothing=0.1"], "train"),
    "soft": (STUDENT, ["distill.type=soft", "distill.alpha=0.5", "distill.tau=1.0"], "train"),
    "hard_views": (STUDENT, [], "views"),
    "hard_online": (STUDENT, [], "online"),
}


def evaluate_once(work, name, config, checkpoint, common, teacher_logits=None):
  """``deit_jax.evaluate --json`` of ``checkpoint``, kept in <work>/results/<name>.json
  (a result already there is returned, not recomputed)."""
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


def run_all(work, seeds, only, per_class, steps, common):
  os.makedirs(os.path.join(work, "results"), exist_ok=True)
  log = os.path.join(work, "log.txt")
  data = [f"--config.subset.per_class={per_class}", *common]
  teacher = os.path.join(work, "teacher_cnn")
  logits = {s: os.path.join(work, "logits", s) for s in ("train", "test", "views", "oracle")}
  print(f"teacher (CNN) on {per_class} images per class", flush=True)
  _run(["deit_jax.main", f"--config={TEACHER}", f"--workdir={teacher}", *TEACHER_SETS, *data],
       log)
  for split, extra in (("train", []), ("test", ["--split=test"]), ("views", ["--views=4"])):
    _run(["deit_jax.teacher", "precompute", f"--config={TEACHER}", f"--checkpoint={teacher}",
          f"--out={logits[split]}", "--storage=full", *extra, *data], log)
  write_oracle_logits(logits["train"], logits["oracle"], per_class, common)
  evaluate_once(work, "teacher_cnn", TEACHER, teacher, data, logits["test"])
  evaluate_once(work, "teacher_cnn_train", TEACHER, teacher, [*data, "--split=train"])
  # Both seeds of a variant before the next variant: a cut-off run still compares.
  for name, (config, overrides, source) in VARIANTS.items():
    for seed in seeds:
      if only and name not in only:
        continue
      run = os.path.join(work, f"{name}_s{seed}")
      sets = [f"--config.{o}" for o in overrides] + [f"--config.seed={seed}",
                                                     f"--config.total_steps={steps}"]
      if source == "online":
        sets.append(f"--config.distill.teacher={teacher}")
      elif source:
        sets.append(f"--config.distill.teacher_logits={logits[source]}")
      print(f"{name} seed {seed}", flush=True)
      if os.path.exists(os.path.join(work, "results", f"{name}_s{seed}.json")):
        continue  # finished and evaluated (the config may have changed since)
      _run(["deit_jax.main", f"--config={config}", f"--workdir={run}", *sets, *data], log)
      evaluate_once(work, f"{name}_s{seed}", config, run, data, logits["test"])


def report(work):
  results = {f[:-5]: json.load(open(os.path.join(work, "results", f)))
             for f in sorted(os.listdir(os.path.join(work, "results")))}
  header = ["run", "seeds", "top-1 avg (%)", "cls head", "dist head", "agreement w/ CNN"]
  rows = []
  if "teacher_cnn" in results:
    rows.append(["CNN teacher", "1", f"{results['teacher_cnn']['top1']:.2f}", "", "", ""])
  if "teacher_cnn_train" in results:  # how often its hard labels differ from the truth
    rows.append(["CNN teacher on its training subset", "1",
                 f"{results['teacher_cnn_train']['top1']:.2f}", "", "", ""])
  for name in VARIANTS:
    runs = [v for k, v in results.items() if k.rsplit("_s", 1)[0] == name]
    if not runs:
      continue
    cell = lambda key: "{:.2f} +- {:.2f}".format(*_stats(runs, key))
    plain = name == "none"
    rows.append([name, str(len(runs)), cell("top1"), "" if plain else cell("top1_cls"),
                 "" if plain else cell("top1_dist"), cell("agreement")])
  table = "\n".join(["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] +
                    ["| " + " | ".join(r) + " |" for r in rows])
  print(table)
  with open(os.path.join(work, "table.md"), "w") as f:
    f.write(table + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--per_class", type=int, default=150)
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--only", default="", help="comma-separated variants")
  parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args()
  only = set(filter(None, args.only.split(",")))
  if only - set(VARIANTS):
    parser.error(f"unknown variants {sorted(only - set(VARIANTS))}; known: {', '.join(VARIANTS)}")
  if not args.report_only:
    run_all(args.workdir, [int(s) for s in args.seeds.split(",")], only, args.per_class,
            args.steps, [f"--config.{s}" for s in args.set])
  report(args.workdir)


if __name__ == "__main__":
  main()
