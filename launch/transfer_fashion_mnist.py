"""Transfer learning on Fashion-MNIST split into two disjoint class sets: pre-train on the
upstream classes, fine-tune on the downstream ones with few labels, compare with training
from scratch on the same labels -- the seed's last experiment (paper Table 7) at a size
this CPU affords.

    .venv/bin/python launch/transfer_fashion_mnist.py --workdir=workdirs/transfer \
        [--seeds=0,1] [--sizes=100,1000] [--pretrain_steps=800] [--steps=200] \
        [--report_only] [--figure=docs/transfer.png] [--set=data_dir=...]

Upstream: classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat), 30,000 images.
Downstream: classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot), N labelled training
images per class (drawn with the run's seed), evaluated on their 5,000 test images.

  upstream    CNN teacher (the chain's cifar_resnet8, --pretrain_steps); its logits; a
              plain DeiT and a distilled DeiT (hard distillation from that CNN), seed 0
  scratch     the plain DeiT trained on the downstream labels only
  plain       the plain upstream DeiT fine-tuned (head re-initialised)
  distilled   the distilled upstream DeiT fine-tuned, keeping hard distillation from a CNN
              teacher trained on the same downstream labels (as the authors fine-tune
              distilled models: the teacher's logits of the target data)

Every run is a project command in a subprocess; finished runs are skipped and interrupted
ones resume, so the script can be stopped and re-run. Results: <workdir>/results/*.json,
<workdir>/table.md and <workdir>/transfer.png (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from reproduce_fashion_mnist import _run, _stats
from small_data_distillation import evaluate_once

PLAIN = "configs/fashion_mnist_deit_tiny.py"
DISTILLED = "configs/fashion_mnist_deit_tiny_distilled.py:full"
TEACHER = "configs/fashion_mnist_resnet_teacher.py"
UPSTREAM, DOWNSTREAM = "0,1,2,3,4", "5,6,7,8,9"
INITS = ("scratch", "plain", "distilled")


def _classes(classes, per_class=0, seed=0):
  return [f"--config.subset.classes={classes}", "--config.num_classes=5",
          f"--config.subset.per_class={per_class}", f"--config.subset.seed={seed}"]


def _teacher(work, name, data, steps, common, log):
  """A CNN teacher on ``data`` and its logits of the train split."""
  path, logits = os.path.join(work, name), os.path.join(work, "logits", name)
  _run(["deit_jax.main", f"--config={TEACHER}", f"--workdir={path}", *data,
        f"--config.total_steps={steps}", "--config.eval_every_steps=-1", *common], log)
  _run(["deit_jax.teacher", "precompute", f"--config={TEACHER}", f"--checkpoint={path}",
        f"--out={logits}", "--storage=full", *data, *common], log)
  return path, logits


def run_all(work, seeds, sizes, pretrain_steps, steps, common):
  os.makedirs(os.path.join(work, "results"), exist_ok=True)
  log = os.path.join(work, "log.txt")
  up = _classes(UPSTREAM)
  budget = [f"--config.total_steps={pretrain_steps}", "--config.eval_every_steps=0"]
  print("upstream: CNN teacher, plain and distilled DeiT", flush=True)
  _, up_logits = _teacher(work, "up_teacher", up, pretrain_steps, common, log)
  pretrained = {"plain": os.path.join(work, "up_plain"),
                "distilled": os.path.join(work, "up_distilled")}
  _run(["deit_jax.main", f"--config={PLAIN}", f"--workdir={pretrained['plain']}", *up,
        *budget, *common], log)
  _run(["deit_jax.main", f"--config={DISTILLED}", f"--workdir={pretrained['distilled']}", *up,
        *budget, f"--config.distill.teacher_logits={up_logits}", *common], log)
  for name, config in (("up_plain", PLAIN), ("up_distilled", DISTILLED)):
    evaluate_once(work, name, config, os.path.join(work, name), [*up, *common])
  for seed in seeds:
    for size in sizes:
      down = _classes(DOWNSTREAM, size, seed) + [f"--config.seed={seed}",
                                                 f"--config.total_steps={steps}",
                                                 "--config.eval_every_steps=0"]
      for init in INITS:
        run = f"{init}_n{size}_s{seed}"
        print(run, flush=True)
        config, extra = PLAIN, []
        if init != "scratch":
          extra += [f"--config.init_from={pretrained[init]}", "--config.init_from_head=reset"]
        if init == "distilled":
          _, logits = _teacher(work, f"down_teacher_n{size}_s{seed}", down[:4], steps,
                               common, log)
          config = DISTILLED
          extra.append(f"--config.distill.teacher_logits={logits}")
        _run(["deit_jax.main", f"--config={config}", f"--workdir={os.path.join(work, run)}",
              *down, *extra, *common], log)
        evaluate_once(work, run, config, os.path.join(work, run), [*down, *common])


def report(work, figure=""):
  results = {f[:-5]: json.load(open(os.path.join(work, "results", f)))
             for f in sorted(os.listdir(os.path.join(work, "results")))}
  sizes = sorted({int(k.split("_n")[1].split("_")[0]) for k in results if "_n" in k})
  groups = {(init, n): [v for k, v in results.items() if k.startswith(f"{init}_n{n}_s")]
            for init in INITS for n in sizes}
  header = ["labels per class"] + [f"{i} (%)" for i in INITS] + ["plain - scratch"]
  rows = []
  for n in sizes:
    cells = [f"{n}"]
    for init in INITS:
      runs = groups[(init, n)]
      cells.append("{:.2f} +- {:.2f} ({})".format(*_stats(runs, "top1"), len(runs))
                   if runs else "-")
    plain, scratch = groups[("plain", n)], groups[("scratch", n)]
    gain = _stats(plain, "top1")[0] - _stats(scratch, "top1")[0] if plain and scratch else None
    cells.append("-" if gain is None else f"{gain:+.2f}")
    rows.append(cells)
  table = "\n".join(["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] +
                    ["| " + " | ".join(r) + " |" for r in rows])
  upstream = ", ".join(f"{k} {results[k]['top1']:.2f}%" for k in ("up_plain", "up_distilled")
                       if k in results)
  text = (table + "\n\nDownstream test top-1, mean +- half-range over seeds (runs).\n"
          + (f"Upstream test top-1 (classes 0-4): {upstream}.\n" if upstream else ""))
  print(text)
  with open(os.path.join(work, "table.md"), "w") as f:
    f.write(text)
  _plot(work, sizes, groups, figure)


def _plot(work, sizes, groups, figure):
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel  # optional `plots` extra
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("(no matplotlib: `bash launch/setup.sh plots` for the PNG)")
    return
  fig, ax = plt.subplots(figsize=(7, 4))
  width = 0.8 / len(INITS)
  stats = {key: _stats(runs, "top1") for key, runs in groups.items() if runs}
  for i, init in enumerate(INITS):
    values = [stats.get((init, n), (0.0, 0.0)) for n in sizes]
    bars = ax.bar([j + i * width for j in range(len(sizes))], [v[0] for v in values], width,
                  yerr=[v[1] for v in values], capsize=3, label=init)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
  low = min([v[0] for v in stats.values()] or [50.0])
  ax.set_xticks([j + width for j in range(len(sizes))], [f"{n} / class" for n in sizes])
  ax.set(ylabel="downstream test top-1 (%)", ylim=(max(0.0, low - 10), 100),
         title="Fashion-MNIST classes 5-9: pre-trained on 0-4 vs scratch")
  ax.legend()
  fig.tight_layout()
  out = os.path.join(work, "transfer.png")
  fig.savefig(out, dpi=100)
  print(f"wrote {out}")
  if figure:
    os.makedirs(os.path.dirname(figure) or ".", exist_ok=True)
    shutil.copyfile(out, figure)
    print(f"wrote {figure}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--sizes", default="100,1000", help="labelled images per class")
  parser.add_argument("--pretrain_steps", type=int, default=800)
  parser.add_argument("--steps", type=int, default=200, help="downstream steps")
  parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--figure", default="")
  args = parser.parse_args()
  if min(args.pretrain_steps, args.steps) <= 0:
    parser.error("--pretrain_steps and --steps must be positive")
  if not args.report_only:
    run_all(args.workdir, [int(s) for s in args.seeds.split(",")],
            [int(s) for s in args.sizes.split(",")], args.pretrain_steps, args.steps,
            [f"--config.{s}" for s in args.set])
  report(args.workdir, args.figure)


if __name__ == "__main__":
  sys.exit(main())
