"""The distillation chain end to end: train a teacher, precompute its logits, train a
DeiT student with hard distillation from them, evaluate both, print the comparison.

    python -m deit_jax.chain --workdir=workdirs/fashion_mnist        # the README's main job

Every step is the project's own command line (``deit_jax.main``, ``deit_jax.teacher
precompute``, ``deit_jax.evaluate``), run as a subprocess with its progress shown, so the
chain does nothing a user could not do by hand. Re-running reuses what is done: a
finished training run is not repeated (its workdir holds the final step), finished
logit shards are kept; ``--fresh`` starts over. Nothing is specific to Fashion-MNIST:
``--set dataset=imagefolder:/data/x --set num_classes=5`` (and matching ``--set
aug.*``) runs the same chain on another dataset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from deit_jax import files

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "directory for every run of the chain")
  flags.DEFINE_string("teacher_config", "configs/fashion_mnist_resnet_teacher.py",
                      "teacher training config")
  flags.DEFINE_string("student_config", "configs/fashion_mnist_deit_tiny_distilled.py",
                      "student training config (distill.type soft or hard)")
  flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every step "
                            "(e.g. data_dir=/data/tfds)")
  flags.DEFINE_multi_string("teacher_set", [], "KEY=VALUE override for the teacher only")
  flags.DEFINE_multi_string("student_set", [], "KEY=VALUE override for the student only")
  flags.DEFINE_string("eval_split", "test", "split for evaluation and agreement")
  flags.DEFINE_enum("storage", "full", ["full", "topk"], "teacher logits storage: full is 2 "
                    "bytes per class, topk 4k + 2 bytes (smaller above 2k + 1 classes)")
  flags.DEFINE_integer("k", 10, "top-k kept with --storage=topk")
  flags.DEFINE_integer("precompute_batch_size", 500, "teacher batch when precomputing logits")
  flags.DEFINE_bool("fresh", False, "delete the workdir first")


def _overrides(pairs):
  out = []
  for pair in pairs:
    if "=" not in pair:
      raise app.UsageError(f"--set expects KEY=VALUE, got {pair!r}")
    out.append(f"--config.{pair}")
  return out


_STAGE_TIMES: list[tuple[str, float]] = []


def cpu_model() -> str:
  """The CPU's model name and widest vector extension (speeds differ a lot between them)."""
  name, flags = "unknown CPU", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == "unknown CPU":
          name = value.strip()
        elif key.strip() == "flags" and not flags:
          flags = set(value.split())
  except OSError:
    import platform
    name = platform.processor() or name
  vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
  return f"{name}, {os.cpu_count()} cores" + (f", {vector}" if vector else "")


def _step(number, total, title, args, json_out=None):
  """Runs ``python -m <args>``, streaming its output; returns its --json result if asked."""
  command = [sys.executable, "-m", *args]
  print(f"\n[{number}/{total}] {title}\n    {' '.join(command)}", flush=True)
  start = time.time()
  if json_out is None:
    code = subprocess.call(command)
    result = None
  else:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
      print(line, end="", flush=True)
      lines.append(line)
    code = proc.wait()
    result = json.loads(lines[-1]) if code == 0 and lines else None
    if result is not None:
      files.write_text(json_out, json.dumps(result, indent=2, sort_keys=True))
  if code != 0:
    print(f"chain: step {number} ({title}) failed with exit code {code}", file=sys.stderr)
    sys.exit(code)
  _STAGE_TIMES.append((title, time.time() - start))
  print(f"    done in {_STAGE_TIMES[-1][1]:.0f} s", flush=True)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  work = files.absolute(FLAGS.workdir)  # local or gs://, like every command it runs
  if FLAGS.fresh and files.exists(work):
    files.rmtree(work)
  files.makedirs(files.join(work, "results"))
  common = _overrides(FLAGS.set)
  teacher_cfg = [f"--config={FLAGS.teacher_config}", *common, *_overrides(FLAGS.teacher_set)]
  student_cfg = [f"--config={FLAGS.student_config}", *common, *_overrides(FLAGS.student_set)]
  teacher_dir, student_dir = files.join(work, "teacher"), files.join(work, "student")
  train_logits = files.join(work, "teacher_logits", "train")
  eval_logits = files.join(work, "teacher_logits", FLAGS.eval_split)
  storage = [f"--storage={FLAGS.storage}", f"--k={FLAGS.k}",
             f"--batch_size={FLAGS.precompute_batch_size}"]
  start = time.time()
  print(f"CPU: {cpu_model()}", flush=True)

  # Training runs skip their own final evaluation (-1): step 5 evaluates the student with
  # the teacher's eval-split logits, which also give the teacher's accuracy.
  no_eval = "--config.eval_every_steps=-1"
  _step(1, 5, "train the teacher",
        ["deit_jax.main", *teacher_cfg, f"--workdir={teacher_dir}", no_eval])
  _step(2, 5, "precompute teacher logits (train split)",
        ["deit_jax.teacher", "precompute", *teacher_cfg, f"--checkpoint={teacher_dir}",
         f"--out={train_logits}", *storage])
  _step(3, 5, f"precompute teacher logits ({FLAGS.eval_split} split, for agreement)",
        ["deit_jax.teacher", "precompute", *teacher_cfg, f"--checkpoint={teacher_dir}",
         f"--split={FLAGS.eval_split}", f"--out={eval_logits}", *storage])
  _step(4, 5, "train the student with distillation",
        ["deit_jax.main", *student_cfg, f"--workdir={student_dir}",
         f"--config.distill.teacher_logits={train_logits}", no_eval])
  student = _step(5, 5, "evaluate the student (and its agreement with the teacher)",
                  ["deit_jax.evaluate", *student_cfg, f"--checkpoint={student_dir}",
                   f"--split={FLAGS.eval_split}", f"--teacher_logits={eval_logits}", "--json"],
                  files.join(work, "results", "student.json"))
  teacher = json.loads(files.read_text(files.join(train_logits, "manifest.json")))["teacher"]
  print(table(teacher["name"], student, time.time() - start), flush=True)
  print("\nstage times:\n" + "\n".join(f"  {seconds:6.0f} s  {title}"
                                         for title, seconds in _STAGE_TIMES), flush=True)


def table(teacher: str, student: dict, seconds: float) -> str:
  rows = [
      f"\n{student['dataset']} / {student['split']}: {student['num_examples']} images "
      f"(chain took {seconds / 60:.1f} min)",
      f"  {'teacher  ' + teacher:48s} top-1 {student['teacher_top1']:6.2f}%",
      f"  {'student  ' + student['model']:48s} cls {student['top1_cls']:6.2f}%  "
      f"dist {student['top1_dist']:6.2f}%  avg {student['top1']:6.2f}%",
      f"  {'student/teacher agreement':48s} cls {student['agreement_cls']:6.2f}%  "
      f"dist {student['agreement_dist']:6.2f}%  avg {student['agreement']:6.2f}%",
  ]
  return "\n".join(rows)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flag_as_required("workdir")
  app.run(main)
