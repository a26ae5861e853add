"""The paper's distillation experiments on Fashion-MNIST: every run, resumable, then the
tables (mean +- spread over seeds), the disagreement matrix and a PNG of the curves.

    .venv/bin/python launch/reproduce_fashion_mnist.py --workdir=workdirs/reproduce \
        [--preset=cpu|gpu|tiny] [--seeds=0,1] [--only=none,hard] [--report_only] \
        [--set=data_dir=...] [--figure=docs/fashion_mnist.png] \
        [--steps=N --teacher_from=workdirs/reproduce]

Runs (same student architecture and budget: configs/fashion_mnist_deit_tiny*.py; the
teacher is configs/fashion_mnist_resnet_teacher.py:full), after the DeiT paper's
(arXiv 2012.12877) Table 3 (distillation kinds), Table 2 (teacher kinds), Table 4
(disagreement):

  none          plain DeiT student, no distillation
  hard          distilled student (class + distillation token), hard labels from per-image
                precomputed CNN logits; evaluated by the cls head, the dist head and both
  hard_cls      plain student, hard distillation on its class token
  soft_cls      plain student, soft distillation on its class token (the paper's T 3,
                lambda 0.1, per-example KL)
  hard_vit      hard distillation from a transformer teacher (the `none` run of seed 0)
  hard_matched  hard distillation from the CNN stopped early, at the checkpoint whose test
                top-1 is closest to the transformer teacher's (teacher accuracy matched)
  hard_oracle   hard distillation from a perfect teacher (stored logits = 10 x one-hot of
                the ground truth): what the distilled two-head model costs or gains when
                its teacher adds nothing to the labels
  hard_views    hard distillation from crop-consistent precomputed logits (4 views/image)
  hard_online   hard distillation from the CNN run online on the same augmented batch
  soft          soft distillation on the dist token, the official code's tau 1, alpha 0.5
  soft_paper    soft distillation on the dist token, the paper's T 3, lambda 0.1

Presets: ``cpu`` (default) the paper's Table 2/3/4 variants (none, hard, hard_cls,
soft_cls, hard_vit, hard_matched) on two seeds, 1,200 steps of batch 128 with the
students at 7x7 patches and the CNN teacher trained 5 epochs -- about 1.5 hours on a
2-core machine; ``cpu_all`` every variant at the configs' budget (4x4 patches, teacher
10 epochs) on two seeds -- about 4 hours, in resumable pieces; ``gpu`` none and hard on
two seeds at 1,800 steps of batch 1024 (30.7 epochs per student), sized for <= 8 minutes
on one H200; ``tiny`` the Table 2/3/4 variants with tiny models and a few steps, which
proves the whole script on CPU (tests/test_reproduce.py).

Each step is one of the project's commands (deit_jax.main / teacher / disagreement) run
as a subprocess; a finished run is not repeated, an interrupted one resumes from its
checkpoints, so the script can be stopped and restarted at any time (e.g. across
sessions). Every run's wall-clock goes to <workdir>/timings.json, and after each student
the script prints the budget left, estimated from the runs measured so far, with the
machine's CPU model. Evaluation is one ``deit_jax.disagreement`` per seed over every run
(each head of the distilled ones) and the CNN's test logits; results land in
<workdir>/results/*.json; the report goes to stdout and <workdir>/table.md (the runs, the
paper's orderings with a verdict each, the mean disagreement matrix), with
<workdir>/table4.png and <workdir>/fashion_mnist.png (training curves, accuracies, the
table; both need matplotlib); --figure copies the latter. --steps gives every student
another budget (the teacher keeps its own); --teacher_from reuses the CNN teacher and its
logits of another workdir instead of training them again (e.g. a longer none-vs-hard pair:
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
import time

import numpy as np

PLAIN = "configs/fashion_mnist_deit_tiny.py"
STUDENT = "configs/fashion_mnist_deit_tiny_distilled.py:full"
TEACHER = "configs/fashion_mnist_resnet_teacher.py:full"
SOFT_PAPER = ["distill.type=soft", "distill.alpha=0.1", "distill.tau=3.0",
              "distill.kl_reduction=batchmean"]
# name: (config, overrides, teacher) in the order they run (seed 0 of every variant first).
# teacher: "cnn" per-image logits, "views" crop-consistent logits, "online" the CNN run in
# the step, "vit" the `none` seed-0 student's logits, "matched" a CNN stopped early at
# about the transformer teacher's accuracy.
VARIANTS = {
    "none": (PLAIN, [], None),
    "hard": (STUDENT, [], "cnn"),
    "hard_cls": (PLAIN, ["distill.type=hard"], "cnn"),
    "soft_cls": (PLAIN, SOFT_PAPER, "cnn"),
    "hard_vit": (STUDENT, [], "vit"),
    "hard_matched": (STUDENT, [], "matched"),
    "hard_oracle": (STUDENT, [], "oracle"),
    "hard_views": (STUDENT, [], "views"),
    "hard_online": (STUDENT, [], "online"),
    "soft": (STUDENT, ["distill.type=soft", "distill.alpha=0.5", "distill.tau=1.0"], "cnn"),
    "soft_paper": (STUDENT, SOFT_PAPER[:3], "cnn"),
}
PAPER_TABLES = ("none", "hard", "hard_cls", "soft_cls", "hard_vit", "hard_matched")
_TINY_MODEL = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2",
               "model.patch_size=7", "batch_size=64", "log_every_steps=1",
               "checkpoint_every_steps=2", "eval_every_steps=-1", "optimizer.warmup_steps=1"]
# steps: student train steps (0: the configs' 1,200); teacher_steps (0: the config's 10
# epochs); matched_steps: the early-stopped CNN's schedule, checkpointed 12 times.
PRESETS = {
    # The paper's Table 2/3/4 analogues on two seeds in about 1.5 h of a 2-core CPU: the
    # students at 7x7 patches (16 tokens, ~2x the step rate of 4x4), the CNN teacher 5
    # epochs (2,340 steps).
    "cpu": dict(seeds="0,1", only=",".join(PAPER_TABLES), steps=0, teacher_steps=2340,
                matched_steps=468, student=["model.patch_size=7"], teacher=[]),
    # Every variant at the configs' budget (4x4 patches, teacher 10 epochs): ~4 h.
    "cpu_all": dict(seeds="0,1", only=",".join(VARIANTS), steps=0, teacher_steps=0,
                    matched_steps=468, student=[], teacher=[]),
    # One H200: 1,800 steps of batch 1024 = 30.7 epochs per student; the teacher keeps
    # its batch-128 recipe (10 epochs).
    "gpu": dict(seeds="0,1", only="none,hard", steps=1800, teacher_steps=0,
                matched_steps=468,
                student=["batch_size=1024", "optimizer.lr=1e-3", "optimizer.warmup_steps=290",
                         "log_every_steps=100", "checkpoint_every_steps=600"], teacher=[]),
    # Proves the whole script on CPU in a few minutes: every step and file, tiny models.
    "tiny": dict(seeds="0", only=",".join(PAPER_TABLES), steps=4, teacher_steps=4,
                 matched_steps=4, student=_TINY_MODEL,
                 teacher=["model.name=cifar_resnet8", "batch_size=64", "optimizer.warmup_steps=1",
                          "checkpoint_every_steps=2", "eval_every_steps=-1"]),
}


def machine() -> str:
  """The CPU model (and GPU, if any) the timings were measured on."""
  cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
              if line.startswith("model name")), "unknown CPU") if os.path.exists(
                  "/proc/cpuinfo") else "unknown CPU"
  text = f"{cpu}, {os.cpu_count()} cores"
  try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    gpu = ""
  return text + (f"; GPU {gpu.splitlines()[0]} x{len(gpu.splitlines())}" if gpu else "")


class Clock:
  """Wall-clock of every finished step in <workdir>/timings.json, and the budget of the
  runs still to do, estimated from the student runs measured so far."""

  def __init__(self, work):
    self.path = os.path.join(work, "timings.json")
    self.times = json.load(open(self.path)) if os.path.exists(self.path) else {}

  def record(self, label, seconds):
    # Added up: a resumed run's pieces count together, a re-invoked finished one its start-up.
    self.times[label] = self.times.get(label, 0.0) + seconds
    json.dump(self.times, open(self.path, "w"), indent=2, sort_keys=True)

  def estimate(self, remaining):
    students = [v for k, v in self.times.items() if k.startswith("train ") and "_s" in k]
    if students and remaining:
      each = sum(students) / len(students)
      print(f"  budget: {len(students)} student run(s) measured at {each / 60:.1f} min "
            f"each on {machine()}; {remaining} to go, about {remaining * each / 60:.0f} min"
            " (+ evaluation)", flush=True)


def _run(args, log, clock=None, label=None):
  command = [sys.executable, "-m", *args]
  print("  $", " ".join(command), flush=True)
  start = time.time()
  with open(log, "a") as f:
    code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT)
  if code:
    sys.exit(f"failed (exit {code}); see {log}")
  if clock is not None and label:
    clock.record(label, time.time() - start)


def write_oracle_logits(real: str, out: str, per_class: int = 0, common=()) -> None:
  """A perfect teacher's store: the real store's examples (``per_class`` images of each
  class, 0: all), logits 10 x one-hot(truth); ``common``'s --config.data_dir is used."""
  if os.path.exists(os.path.join(out, "manifest.json")):
    return
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import fashion_mnist_deit_tiny
  from deit_jax import config_glue
  from deit_jax.teacher import store
  manifest = store.read_manifest(real)
  config = fashion_mnist_deit_tiny.get_config()
  config.subset.per_class = per_class
  for flag in common:
    if flag.startswith("--config.data_dir="):
      config.data_dir = flag.split("=", 1)[1]
  source = config_glue.open_split(config, "train")
  assert source.name == manifest["dataset"], (source.name, manifest["dataset"])
  os.makedirs(out, exist_ok=True)
  logits = 10.0 * np.eye(source.num_classes, dtype=np.float32)[source.labels]
  shard = store.write_shard(out, np.arange(source.num_examples),
                            store.compress(logits, "full", 0))
  teacher = {"name": "oracle (the ground-truth labels)", "framework": "none"}
  store.write_manifest(out, {**{k: v for k, v in manifest.items() if k != "format"},
                             "shards": [shard], "storage": "full", "k": None,
                             "teacher": teacher})


def _disagreement(out, entries, common, log):
  """``deit_jax.disagreement`` of ``entries`` (flags) on the test split -> its JSON."""
  _run(["deit_jax.disagreement", f"--config={PLAIN}", *entries, f"--out={out}", *common], log)
  return json.load(open(os.path.join(out, "disagreement.json")))


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


def _matched_teacher(work, common, preset, log, clock):
  """A CNN trained ``matched_steps`` with checkpoints along the way; the one closest in
  test top-1 to the transformer teacher (`none` seed 0) gives the logits."""
  path = os.path.join(work, "matched_teacher.json")
  if os.path.exists(path):
    return json.load(open(path))
  run, steps = os.path.join(work, "teacher_cnn_matched"), preset["matched_steps"]
  every = max(steps // 12, 1)
  print("CNN teacher stopped early (to match the transformer teacher)", flush=True)
  _run(["deit_jax.main", f"--config={TEACHER}", f"--workdir={run}", *common,
        *[f"--config.{s}" for s in preset["teacher"]], f"--config.total_steps={steps}",
        f"--config.checkpoint_every_steps={every}", "--config.keep_checkpoints=100",
        f"--config.optimizer.warmup_steps={max(steps // 10, 1)}",
        "--config.eval_every_steps=-1"], log, clock, "train teacher_cnn_matched")
  found = sorted(int(d) for d in os.listdir(os.path.join(run, "checkpoints")) if d.isdigit())
  entries = [f"--model=vit={os.path.join(work, 'none_s0')}:cls"] + [
      f"--model=step{k}={os.path.join(run, 'checkpoints', str(k))}" for k in found]
  top1 = _disagreement(os.path.join(work, "matched_teacher"), entries,
                       common + ["--noplot"], log)["top1"]
  step = min(found, key=lambda k: abs(top1[f"step{k}"] - top1["vit"]))
  logits = os.path.join(work, "logits", "matched_train")
  _run(["deit_jax.teacher", "precompute", f"--config={TEACHER}",
        f"--checkpoint={os.path.join(run, 'checkpoints', str(step))}", f"--out={logits}",
        "--storage=full", *common], log)
  chosen = {"step": step, "top1": top1[f"step{step}"], "vit_top1": top1["vit"],
            "logits": logits, "steps": steps,
            "checkpoints": {k: top1[f"step{k}"] for k in found}}
  json.dump(chosen, open(path, "w"), indent=2, sort_keys=True)
  return chosen


def run_all(work, seeds, only, common, steps=0, teacher_from="", preset=None):
  preset = preset or PRESETS["cpu"]
  os.makedirs(os.path.join(work, "results"), exist_ok=True)
  _check_budget(work, steps)
  print(f"machine: {machine()}", flush=True)
  log, clock = os.path.join(work, "log.txt"), Clock(work)
  student_sets = [f"--config.{s}" for s in preset["student"]]
  teacher_sets = [f"--config.{s}" for s in preset["teacher"]] + (
      [f"--config.total_steps={preset['teacher_steps']}"] if preset["teacher_steps"] else [])
  home = teacher_from or work  # where the teacher and its logits live
  teacher = os.path.join(home, "teacher_cnn")
  logits = {s: os.path.join(home, "logits", s) for s in ("train", "test", "views")}
  if teacher_from:
    missing = [p for p in (teacher, logits["train"], logits["test"]) if not os.path.isdir(p)]
    if missing:
      sys.exit(f"error: --teacher_from={teacher_from} has no {missing[0]}: run the script "
               f"with --workdir={teacher_from} first")
  else:
    print("teacher (CNN)", flush=True)
    _run(["deit_jax.main", f"--config={TEACHER}", f"--workdir={teacher}", *teacher_sets,
          *common], log, clock, "train teacher_cnn")
    wanted = [("train", []), ("test", ["--split=test"])] + (
        [("views", ["--views=4"])] if "hard_views" in only else [])
    for split, extra in wanted:
      _run(["deit_jax.teacher", "precompute", f"--config={TEACHER}",
            f"--checkpoint={teacher}", f"--out={logits[split]}", "--storage=full", *extra,
            *common], log)
  names = [n for n in VARIANTS if n in only]
  needs_vit = {"hard_vit", "hard_matched"} & set(names)
  todo = [(seed, n) for seed in seeds for n in names]
  if needs_vit and (0, "none") not in todo:
    todo.insert(0, (0, "none"))  # the transformer teacher
  for i, (seed, name) in enumerate(todo):
    config, overrides, source = VARIANTS[name]
    run = os.path.join(work, f"{name}_s{seed}")
    if _finished(work, name, seed):
      continue  # trained and evaluated by an earlier invocation
    sets = [f"--config.{o}" for o in overrides] + [f"--config.seed={seed}"] + student_sets + (
        [f"--config.total_steps={steps}"] if steps else [])
    if source == "vit":
      vit_logits = os.path.join(work, "logits", "vit_train")
      _run(["deit_jax.teacher", "precompute", f"--config={PLAIN}",
            f"--checkpoint={os.path.join(work, 'none_s0')}", f"--out={vit_logits}",
            "--storage=full", *student_sets, *common], log)
      sets.append(f"--config.distill.teacher_logits={vit_logits}")
    elif source == "matched":
      matched = _matched_teacher(work, common, preset, log, clock)
      sets.append(f"--config.distill.teacher_logits={matched['logits']}")
    elif source == "oracle":
      oracle = os.path.join(work, "logits", "oracle_train")
      write_oracle_logits(logits["train"], oracle, common=common)
      sets.append(f"--config.distill.teacher_logits={oracle}")
    elif source == "online":
      sets.append(f"--config.distill.teacher={teacher}")
    elif source in ("cnn", "views"):
      store = logits["train" if source == "cnn" else "views"]
      sets.append(f"--config.distill.teacher_logits={store}")
    print(f"{name} seed {seed}", flush=True)
    _run(["deit_jax.main", f"--config={config}", f"--workdir={run}", *sets, *common], log,
         clock, f"train {name}_s{seed}")
    clock.estimate(len(todo) - i - 1)
  for seed in sorted({s for s, _ in todo}):
    # The seed's matrix covers its runs of earlier invocations too (--only of a few
    # variants must not drop the others from it).
    names = [n for n in VARIANTS if (seed, n) in todo or _finished(work, n, seed)]
    _evaluate_seed(work, seed, names, logits["test"], common, student_sets, log)


def _finished(work, name, seed) -> bool:
  """Whether the run was trained and evaluated (by this or an earlier invocation)."""
  return os.path.exists(os.path.join(work, "results", f"{name}_s{seed}.json"))


def _evaluate_seed(work, seed, names, cnn_logits, common, student_sets, log):
  """One ``deit_jax.disagreement`` over every run of a seed (each head of the distilled
  ones) and the CNN's test logits: top-1 per head, agreement with the CNN, and the
  paper's Table 4 matrix; results/<run>.json per run."""
  results = os.path.join(work, "results")
  if all(os.path.exists(os.path.join(results, f"{n}_s{seed}.json")) for n in names) and \
      os.path.exists(os.path.join(results, "teacher_cnn.json")):
    return
  entries = [f"--logits=cnn={cnn_logits}"]
  for name in names:
    run = os.path.join(work, f"{name}_s{seed}")
    if VARIANTS[name][0] == PLAIN:
      entries.append(f"--model={name}={run}:cls")
    else:
      entries += [f"--model={name}.cls={run}:cls", f"--model={name}.dist={run}:dist",
                  f"--model={name}={run}:avg"]
  print(f"evaluation of seed {seed}", flush=True)
  value = _disagreement(os.path.join(work, f"disagreement_s{seed}"), entries,
                        common + student_sets + ["--noplot"], log)
  index = {n: i for i, n in enumerate(value["names"])}
  m = value["matrix"]
  top1 = lambda n: 100.0 * (1.0 - m[0][index[n]])
  for name in names:
    heads = {"top1": top1(name), "agreement": 100.0 * (1.0 - m[index["cnn"]][index[name]])}
    heads["top1_cls"] = top1(f"{name}.cls") if f"{name}.cls" in index else heads["top1"]
    heads["top1_dist"] = top1(f"{name}.dist") if f"{name}.dist" in index else heads["top1"]
    json.dump(heads, open(os.path.join(results, f"{name}_s{seed}.json"), "w"), indent=2)
  json.dump({"top1": top1("cnn")}, open(os.path.join(results, "teacher_cnn.json"), "w"))


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


def _markdown(header, rows):
  return "\n".join(["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] +
                   ["| " + " | ".join(r) + " |" for r in rows])


def _steps_of(work, run):
  """', N steps' from a run's metrics (the last step logged), or ''."""
  path = os.path.join(work, run, "metrics.jsonl")
  steps = [json.loads(line).get("step", 0) for line in open(path)] if os.path.exists(path) else []
  return f", {max(steps):,} steps" if steps else ""


def report(work, figure=None):
  results = {}
  for file in sorted(os.listdir(os.path.join(work, "results"))):
    results[file[:-5]] = json.load(open(os.path.join(work, "results", file)))
  rows = []
  if "teacher_cnn" in results:
    rows.append([f"CNN teacher (cifar_resnet20{_steps_of(work, 'teacher_cnn')})", "1",
                 f"{results['teacher_cnn']['top1']:.2f}", "", "", ""])
  matched = os.path.join(work, "matched_teacher.json")
  matched = json.load(open(matched)) if os.path.exists(matched) else None
  if matched:
    rows += [[f"CNN teacher stopped at step {matched['step']} of {matched['steps']}", "1",
              f"{matched['top1']:.2f}", "", "", ""],
             ["transformer teacher (none, seed 0)", "1", f"{matched['vit_top1']:.2f}", "", "",
              ""]]
  groups = _group(results)
  for name, runs in groups.items():
    plain = VARIANTS[name][0] == PLAIN
    rows.append([name, str(len(runs)), _cell(runs, "top1"),
                 "" if plain else _cell(runs, "top1_cls"),
                 "" if plain else _cell(runs, "top1_dist"), _cell(runs, "agreement")])
  header = ["run", "seeds", "top-1 avg (%)", "cls head", "dist head", "agreement w/ CNN"]
  parts = [_markdown(header, rows), _orderings(groups), _table4(work)]
  text = "\n\n".join(p for p in parts if p)
  print(text)
  with open(os.path.join(work, "table.md"), "w") as f:
    f.write(text + "\n")
  _plot(work, results, groups, header, rows, figure)


def _orderings(groups):
  """The paper's orderings, each: holds beyond the spread / within it / does not hold."""
  checks = [("hard_cls", "top1", "soft_cls", "top1", "hard > soft, class token only"),
            ("hard_cls", "top1", "none", "top1", "hard (class token) > none"),
            ("hard", "top1", "hard", "top1_cls", "distilled: both heads >= cls head"),
            ("hard", "top1", "hard", "top1_dist", "distilled: both heads >= dist head"),
            ("hard", "agreement", "none", "agreement",
             "distilled agrees more with the CNN than none does"),
            ("hard_matched", "top1", "hard_vit", "top1",
             "CNN teacher > transformer teacher of about equal accuracy")]
  lines = []
  for a, ka, b, kb, claim in checks:
    if a not in groups or b not in groups:
      continue
    (ma, ha), (mb, hb) = _stats(groups[a], ka), _stats(groups[b], kb)
    holds = ma >= mb if ">=" in claim else ma > mb
    verdict = ("holds" if holds else "does not hold") + (
        " (one seed: no spread)" if min(len(groups[a]), len(groups[b])) < 2 else
        " beyond the spread" if ma - ha > mb + hb else " within the spread" if holds else "")
    lines.append(f"| {claim} | {ma:.2f} +- {ha:.2f} vs {mb:.2f} +- {hb:.2f} | {verdict} |")
  if "soft_cls" in groups and "none" in groups:
    (ma, ha), (mb, hb) = _stats(groups["soft_cls"], "top1"), _stats(groups["none"], "top1")
    verdict = ("holds" if abs(ma - mb) <= ha + hb else "does not hold") + (
        " (one seed: no spread)" if min(len(groups["soft_cls"]), len(groups["none"])) < 2
        else "")
    lines.append(f"| soft (class token) ~ none | {ma:.2f} +- {ha:.2f} vs {mb:.2f} +- "
                 f"{hb:.2f} | {verdict} |")
  return _markdown(["paper's ordering", "ours (mean +- half-range)", "verdict"], []) + \
      "\n" + "\n".join(lines) if lines else ""


TABLE4 = ["groundtruth", "cnn", "none", "hard.cls", "hard.dist", "hard"]


def _table4(work):
  """The paper's Table 4 over the seeds evaluated: mean disagreement matrix of the CNN
  teacher, the `none` student and the distilled student's heads (table4.png)."""
  found = []
  for d in sorted(os.listdir(work)):
    path = os.path.join(work, d, "disagreement.json")
    if d.startswith("disagreement_s") and os.path.exists(path):
      value = json.load(open(path))
      if set(TABLE4) <= set(value["names"]):
        index = [value["names"].index(n) for n in TABLE4]
        found.append(np.asarray(value["matrix"])[np.ix_(index, index)])
  if not found:
    return ""
  mean, half = np.mean(found, 0), (np.max(found, 0) - np.min(found, 0)) / 2
  rows = [[n] + [f"{m:.3f} +- {h:.3f}" for m, h in zip(mean[i], half[i])]
          for i, n in enumerate(TABLE4)]
  try:
    from deit_jax.disagreement import plot_heatmap  # pylint: disable=import-outside-toplevel
    plot_heatmap(os.path.join(work, "table4.png"), TABLE4, mean,
                 f"Fashion-MNIST test, mean of {len(found)} seed(s)")
  except Exception as e:  # pylint: disable=broad-except  # no matplotlib: table only
    print(f"(no table4.png: {e})")
  return (f"Disagreement (fraction of test images on which the top-1 decisions differ; "
          f"mean +- half-range over {len(found)} seed(s)):\n\n" + _markdown([""] + TABLE4, rows))


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
    tab.auto_set_column_width([0])  # the run names in full
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
  parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                      help="budget and variants: cpu (Tables 2-4, ~1.5 h on 2 cores), cpu_all "
                      "(every variant, configs' budget, ~4 h), gpu (one H200, <= 8 min), "
                      "tiny (the whole script in minutes on CPU, for a test)")
  parser.add_argument("--seeds", default="", help="default: the preset's")
  parser.add_argument("--only", default="", help="comma-separated variants (default: the "
                      "preset's)")
  parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--steps", type=int, default=-1,
                      help="train steps of every student (default: the preset's)")
  parser.add_argument("--teacher_from", default="", help="workdir whose CNN teacher and "
                      "logits to reuse (default: train them in --workdir)")
  parser.add_argument("--figure", default="", help="also write the PNG here "
                      "(docs/reproduction.md shows docs/fashion_mnist.png)")
  args = parser.parse_args()
  preset = PRESETS[args.preset]
  only = set(filter(None, (args.only or preset["only"]).split(",")))
  unknown = only - set(VARIANTS)
  if unknown:
    parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
  steps = preset["steps"] if args.steps == -1 else args.steps
  if steps < 0:
    parser.error("--steps must be positive (0: the configs' budget)")
  if not args.report_only:
    run_all(args.workdir, [int(s) for s in (args.seeds or preset["seeds"]).split(",")], only,
            [f"--config.{s}" for s in args.set], steps, args.teacher_from, preset)
  report(args.workdir, args.figure)


if __name__ == "__main__":
  main()
