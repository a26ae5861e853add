"""The pod path of docs/launch.md, rehearsed end to end on one machine.

    bash launch/setup.sh test,torch,tpu && .venv/bin/python launch/rehearse_pod.py \
        --work=/tmp/rehearsal

Runs every documented step of a v4-32 run as written, with local stand-ins for what only a
pod has: the check that the config fits the slice (``deit_jax.bench.pod_compile``, real TPU
programs compiled by libtpu on this CPU) -> a miniature ILSVRC2012 in the official tar
layout (JPEGs cut from real sample photographs) -> ``python -m deit_jax.data.prepare`` into
a directory standing for the bucket -> ``python -m deit_jax.data.stage`` of it onto a local
disk, as each host does -> RegNetY-16GF teacher weights converted and its logits
precomputed on several processes -> ``configs/deit_tiny.py`` as shipped (global batch 1024,
batch_groups, repeated augmentation, hard distillation) on ``--processes`` local processes
with ``--devices`` CPU devices each (4 x 4 = the 16 chips of a v4-32 on its 4 hosts) ->
SIGTERM to one process: every process stops at the same step with one checkpoint -> the same
command again resumes and finishes -> ``evaluate`` (of the staged copy) -> ``export``.
Training reads the bucket itself, so that the array_record client's path is exercised
too. Only the data location, the step count and gradient accumulation (the same maths in
micro-batches, to fit this machine's memory) differ from the documented commands. The
teacher's weights are random (the official file cannot be downloaded here), saved in the
official file's layout.

With ``--bucket=standin`` the bucket is ``gs://deit-rehearsal`` served by the GCS stand-in
(``deit_jax.bench.gcs_standin``, objects under ``<work>/standin``): every command reaches it
through its own client, as on a pod (tf.io.gfile, array_record, tensorstore,
google-cloud-storage), and the requests and bytes of each stage, per client, are printed at
the end and kept in ``<work>/standin_requests.json``. ``--latency_ms`` adds a delay to each
request.

Each stage's wall-clock is printed at the end; a stage whose output exists is skipped, so an
interrupted rehearsal continues where it stopped. The test suite runs a smaller form
(tests/test_rehearsal.py: smaller batch, model and teacher, through the stand-in).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--work", required=True, help="rehearsal directory (bucket, runs, logs)")
  p.add_argument("--classes", type=int, default=10, help="ImageNet classes in the miniature")
  p.add_argument("--per_class", type=int, default=110, help="training images per class")
  p.add_argument("--val", type=int, default=50, help="validation images")
  p.add_argument("--processes", type=int, default=4, help="processes (hosts of a v4-32: 4)")
  p.add_argument("--devices", type=int, default=4, help="CPU devices per process (chips)")
  p.add_argument("--steps", type=int, default=3, help="training steps (the one override "
                 "of the schedule)")
  p.add_argument("--grad_accum", type=int, default=16, help="micro-batches per step")
  p.add_argument("--signal_after", type=float, default=60.0,
                 help="seconds after training starts (its 'training steps' line) to SIGTERM "
                 "one process; must fall before the last step")
  p.add_argument("--config", default="configs/deit_tiny.py", help="the student's config")
  p.add_argument("--teacher_config", default="configs/regnety_160_teacher.py")
  p.add_argument("--teacher", default="regnety_160", help="timm teacher architecture")
  p.add_argument("--teacher_batch", type=int, default=64, help="precompute --batch_size")
  p.add_argument("--fit_check", action=argparse.BooleanOptionalAction, default=True,
                 help="stage 0, pod_compile of the config for --topology (needs the tpu "
                 "extra; the test suite's smaller form leaves it to tests/test_pod_compile.py)")
  p.add_argument("--topology", default="v4-32", help="the slice the processes stand for")
  p.add_argument("--bucket", choices=("dir", "standin"), default="dir",
                 help="dir: <work>/bucket stands for gs://BUCKET; standin: gs://deit-rehearsal "
                 "on the local GCS stand-in, reached by every client as on a pod")
  p.add_argument("--latency_ms", type=float, default=0.0,
                 help="--bucket=standin: added to every request")
  p.add_argument("--smaller", action="append", default=[], metavar="KEY=VALUE",
                 help="extra --config.KEY=VALUE of the student (the test suite's smaller "
                 "form only: the rehearsal proper adds none)")
  return p.parse_args(argv)


# ---------------------------------------------------------------------------
# The miniature ILSVRC2012 (the official tars' layout, as TFDS's imagenet2012 reads them)
# ---------------------------------------------------------------------------

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def make_ilsvrc(manual_dir: str, classes: int, per_class: int, val: int) -> None:
  """ILSVRC2012_img_train.tar (one <synset>.tar of <synset>_<i>.JPEG per class) and
  ILSVRC2012_img_val.tar (ILSVRC2012_val_<8 digits>.JPEG; TFDS labels them from its own
  list, in file-name order), JPEGs cut from real photographs."""
  import tensorflow_datasets as tfds

  from deit_jax.bench.input_pipeline import photo_crops
  labels = tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()
  synsets = labels[::len(labels) // classes][:classes]  # spread over the label set
  photos = photo_crops(classes * per_class + val, seed=1)
  os.makedirs(manual_dir, exist_ok=True)
  partial = os.path.join(manual_dir, "partial.tar")
  with tarfile.open(partial, "w") as train:
    for synset in synsets:
      buffer = io.BytesIO()
      with tarfile.open(fileobj=buffer, mode="w") as inner:
        for i in range(per_class):
          _add(inner, f"{synset}_{i}.JPEG", next(photos))
      _add(train, f"{synset}.tar", buffer.getvalue())
  os.replace(partial, os.path.join(manual_dir, "ILSVRC2012_img_train.tar"))
  with tarfile.open(partial, "w") as tar:
    for i in range(val):
      _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", next(photos))
  os.replace(partial, os.path.join(manual_dir, "ILSVRC2012_img_val.tar"))


def save_teacher_weights(path: str, architecture: str) -> None:
  """A randomly initialised timm ``architecture`` in the official teacher file's layout
  (``{"model": state_dict}``, as regnety_160-a5fe301d.pth)."""
  from deit_jax.torch_stack import import_timm
  timm = import_timm()
  import torch
  torch.manual_seed(0)
  model = timm.create_model(architecture, num_classes=1000)
  torch.save({"model": model.state_dict()}, path + ".partial")
  os.replace(path + ".partial", path)


# ---------------------------------------------------------------------------
# Running the documented commands
# ---------------------------------------------------------------------------

STANDIN_BUCKET = "deit-rehearsal"
CLIENTS = ("tensorflow", "array_record", "tensorstore", "google-cloud-storage")


class Rehearsal:
  def __init__(self, args):
    from deit_jax import files
    self.args = args
    self.work = os.path.abspath(args.work)
    self.standin = None
    if args.bucket == "standin":  # every command below inherits its environment
      from deit_jax.bench.gcs_standin import StandIn
      self.standin = StandIn(os.path.join(self.work, "standin"),
                             latency_s=args.latency_ms / 1e3).start().activate()
      self.bucket = f"gs://{STANDIN_BUCKET}"
    else:
      self.bucket = os.path.join(self.work, "bucket")  # stands for gs://BUCKET
    self.data_dir = files.join(self.bucket, "tensorflow_datasets")
    self.logits = files.join(self.bucket, "teacher_logits", "regnety160")
    self.teacher_dir = files.join(self.bucket, "models", args.teacher)
    self.workdir = files.join(self.bucket, "runs", "deit_tiny")
    self.logs = os.path.join(self.work, "logs")
    self.times: list[tuple[str, float, str]] = []
    self.requests: dict[str, dict] = {}  # stage -> client -> counters (the stand-in's)
    os.makedirs(self.logs, exist_ok=True)

  def stage(self, name: str, done: bool, fn) -> None:
    if done:
      print(f"[rehearsal] {name}: already done", flush=True)
      self.times.append((name, 0.0, "skipped (done earlier)"))
      return
    print(f"[rehearsal] {name} ...", flush=True)
    start = time.time()
    if self.standin:
      self.standin.reset_stats()
    note = fn() or ""
    self.times.append((name, time.time() - start, note))
    if self.standin:
      self.requests[name] = self.standin.stats.snapshot()["clients"]
    print(f"[rehearsal] {name}: {time.time() - start:.0f} s {note}", flush=True)

  def run(self, name: str, command: list[str], **kwargs) -> str:
    """Runs one command to the end; its output goes to logs/<name>.log and is returned."""
    log = os.path.join(self.logs, f"{name}.log")
    print("[rehearsal] $ " + " ".join(command), flush=True)
    with open(log, "w") as out:
      rc = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                          **kwargs).returncode
    text = open(log).read()
    if rc:
      sys.exit(f"[rehearsal] FAILED: {name} exited {rc}; its output: {log}\n"
               + "\n".join(text.splitlines()[-25:]))
    return text

  def multihost(self, module: str, flags: list[str], devices: int) -> list[list[str]]:
    """One command line per process, as on each host of a pod (over loopback here)."""
    with socket.socket() as s:  # a free port for this command's coordinator
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    return [[sys.executable, "-m", module, f"--coordinator_address=127.0.0.1:{port}",
             f"--num_processes={self.args.processes}", f"--process_id={i}",
             f"--cpu_devices={devices}", *flags] for i in range(self.args.processes)]

  def run_processes(self, name: str, commands, *, on_start=None) -> list[str]:
    """Starts one process per command, optionally calls ``on_start(procs, logs)``, waits for
    all; every one must exit 0."""
    logs = [os.path.join(self.logs, f"{name}.process_{i}.log") for i in range(len(commands))]
    print("[rehearsal] $ " + " ".join(commands[0]) + f"   (x {len(commands)} processes)",
          flush=True)
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
             for c, log in zip(commands, logs)]
    if on_start:
      on_start(procs, logs)
    codes = [p.wait() for p in procs]
    texts = [open(log).read() for log in logs]
    if any(codes):
      bad = next(i for i, c in enumerate(codes) if c)
      sys.exit(f"[rehearsal] FAILED: {name} exit codes {codes}; process {bad}'s output "
               f"{logs[bad]}:\n" + "\n".join(texts[bad].splitlines()[-25:]))
    return texts

  # ------------------------------------------------------------------- the stages
  def train_flags(self) -> list[str]:
    a = self.args
    return [f"--config={a.config}", f"--workdir={self.workdir}",
            f"--config.data_dir={self.data_dir}",
            f"--config.distill.teacher_logits={self.logits}",
            f"--config.total_steps={a.steps}", f"--config.grad_accum_steps={a.grad_accum}",
            *[f"--config.{kv}" for kv in a.smaller]]

  def interrupted_training(self) -> str:
    """Training on every process; SIGTERM to the last one mid-run."""
    sent = {}

    def signal_one(procs, logs):
      started = None
      while all(p.poll() is None for p in procs):
        text = open(logs[0]).read()
        if started is None and "training steps" in text:
          started = time.time()
        if started is not None and time.time() - started > self.args.signal_after:
          procs[-1].send_signal(signal.SIGTERM)
          sent["at"] = time.time() - started
          return
        time.sleep(1)

    texts = self.run_processes("train", self.multihost("deit_jax.main", self.train_flags(),
                                                       self.args.devices), on_start=signal_one)
    if "at" not in sent:
      sys.exit("[rehearsal] FAILED: training ended before the SIGTERM was sent")
    saved = [re.findall(r"saved step (\d+)", t) for t in texts]
    steps = {s for found in saved for s in found}
    on_disk = self.checkpoint_steps()
    if len(steps) != 1 or on_disk != sorted(int(s) for s in steps):
      sys.exit(f"[rehearsal] FAILED: processes reported saved steps {saved}; on disk "
               f"{on_disk}")
    step = int(steps.pop())
    if step >= self.args.steps:
      sys.exit(f"[rehearsal] FAILED: the SIGTERM came too late (run finished at {step})")
    return f"(SIGTERM to process {self.args.processes - 1} after {sent['at']:.0f} s: " \
           f"every process stopped at step {step}, one checkpoint)"

  def resumed_training(self) -> str:
    texts = self.run_processes("resume", self.multihost("deit_jax.main", self.train_flags(),
                                                        self.args.devices))
    resumed = re.search(r"resumed from \S+ at step (\d+)", texts[0])
    if not resumed or self.checkpoint_steps()[-1:] != [self.args.steps]:
      sys.exit(f"[rehearsal] FAILED: the re-run did not resume and finish "
               f"(checkpoints {self.checkpoint_steps()})")
    return f"(resumed at step {resumed.group(1)}, finished step {self.args.steps})"

  def checkpoint_steps(self) -> list[int]:
    from deit_jax import checkpoint, files
    return checkpoint.committed_steps(files.join(self.workdir, "checkpoints"))

  def main(self) -> None:
    a = self.args
    manual = os.path.join(self.work, "manual")
    py = sys.executable
    fit = os.path.join(self.work, "fit.json")
    if a.fit_check:
      self.stage(f"0 the config fits a {a.topology}", os.path.exists(fit),
                 lambda: self._fit_check(fit))
    from deit_jax import files
    self.stage("1 miniature ILSVRC2012 tars", os.path.exists(
        os.path.join(manual, "ILSVRC2012_img_val.tar")),
        lambda: make_ilsvrc(manual, a.classes, a.per_class, a.val))
    self.stage("2 prepare into the bucket", files.exists(files.join(
        self.data_dir, "imagenet2012")), lambda: self.run("prepare", [
            py, "-m", "deit_jax.data.prepare", "--dataset=imagenet2012",
            f"--manual_dir={manual}", f"--data_dir={self.data_dir}",
            f"--local_dir={os.path.join(self.work, 'local_tfds')}"]) and None)
    staged = os.path.join(self.work, "host_tfds")  # a host's local copy (docs/launch.md 5.)
    self.stage("2b stage onto a host's disk", os.path.exists(os.path.join(
        staged, "imagenet2012")), lambda: self.run("stage", [
            py, "-m", "deit_jax.data.stage", "--dataset=imagenet2012",
            f"--data_dir={self.data_dir}", f"--local_dir={staged}"]) and None)
    weights = os.path.join(self.work, f"{a.teacher}-official-layout.pth")
    self.stage("3a teacher weights (random, official layout)", os.path.exists(weights),
               lambda: save_teacher_weights(weights, a.teacher))
    self.stage("3b convert the teacher", files.exists(self.teacher_dir), lambda: self.run(
        "convert", [py, "-m", "deit_jax.convert", weights, f"--model={a.teacher}",
                    f"--out={self.teacher_dir}"]) and None)
    self.stage("3c teacher logits (every process)", files.exists(
        files.join(self.logits, "manifest.json")), lambda: self.run_processes(
            "precompute", [c[:3] + ["precompute"] + c[3:] for c in self.multihost(
                "deit_jax.teacher", [f"--config={a.teacher_config}",
                                     f"--checkpoint={self.teacher_dir}", "--split=train",
                                     f"--out={self.logits}", f"--batch_size={a.teacher_batch}",
                                     f"--config.data_dir={self.data_dir}"], 1)]) and None)
    self.stage("4 train, SIGTERM to one process", bool(self.checkpoint_steps()),
               self.interrupted_training)
    self.stage("5 the same command again: resume", self.checkpoint_steps()[-1:] == [a.steps],
               self.resumed_training)
    report = os.path.join(self.work, "evaluate.json")
    self.stage("6 evaluate (the staged copy)", os.path.exists(report),
               lambda: self._evaluate(report, staged))
    exported = files.join(self.bucket, "export", "deit_tiny.safetensors")
    self.stage("7 export", files.exists(exported), lambda: self.run("export", [
        py, "-m", "deit_jax.export", self.workdir, f"--out={exported}"]) and None)
    total = sum(t for _, t, _ in self.times)
    print("\n[rehearsal] passed; wall-clock per stage:")
    for name, seconds, note in self.times:
      print(f"  {name:<44} {seconds:7.0f} s  {note}")
    print(f"  {'total':<44} {total:7.0f} s")
    if self.standin:
      self.report_requests()

  def report_requests(self) -> None:
    """Each stage's requests and bytes per client, as the stand-in counted them; fails if
    a client that the pod path needs never reached it (a silent fall-back to local files
    would show as none)."""
    path = os.path.join(self.work, "standin_requests.json")
    earlier = json.load(open(path)) if os.path.exists(path) else {}
    earlier.update(self.requests)
    with open(path + ".partial", "w") as f:
      json.dump(earlier, f, indent=1)
    os.replace(path + ".partial", path)
    print(f"\n[rehearsal] requests to the GCS stand-in per stage (all: {path}):")
    print(f"  {'stage':<44} {'client':<22} {'requests':>9} {'connections':>11} "
          f"{'MB sent':>9} {'MB received':>11}")
    for stage, clients in earlier.items():
      for client, c in sorted(clients.items()):
        if client == "control":
          continue
        print(f"  {stage:<44} {client:<22} {c.get('requests', 0):>9} "
              f"{c.get('connections', 0):>11} {c.get('bytes_sent', 0) / 1e6:>9.2f} "
              f"{c.get('bytes_received', 0) / 1e6:>11.2f}")
    missing = [c for c in CLIENTS if not any(clients.get(c, {}).get("requests")
                                             for clients in earlier.values())]
    if missing:
      sys.exit(f"[rehearsal] FAILED: no request from {', '.join(missing)} reached the GCS "
               "stand-in")

  def _fit_check(self, report: str) -> str:
    """docs/launch.md's check before renting a slice: the train step compiled for it."""
    a = self.args
    text = self.run("fit_check", [sys.executable, "-m", "deit_jax.bench.pod_compile",
                                  f"--config={a.config}", f"--topology={a.topology}",
                                  "--search=false", "--steps=train", "--json",
                                  *[f"--config.{kv}" for kv in a.smaller]])
    result = [line for line in text.splitlines() if line.startswith('{"')][-1]  # --json's
    train = json.loads(result)["steps"]["train"]
    if not train["fits"]:
      sys.exit(f"[rehearsal] FAILED: {a.config} does not fit a {a.topology}: "
               f"{train.get('error') or train['memory_bytes']}")
    with open(report, "w") as f:
      json.dump(train, f)
    return (f"(train step: {train['memory_bytes']['total'] / 2 ** 30:.1f} of "
            f"{train['capacity_bytes'] / 2 ** 30:.0f} GiB per chip, compiled in "
            f"{train['compile_s']:.0f} s)")

  def _evaluate(self, report: str, data_dir: str) -> str:
    a = self.args
    text = self.run("evaluate", [sys.executable, "-m", "deit_jax.evaluate",
                                 f"--config={a.config}", f"--checkpoint={self.workdir}",
                                 f"--config.data_dir={data_dir}", "--json",
                                 *[f"--config.{kv}" for kv in a.smaller]])
    result = json.loads(text.strip().splitlines()[-1])
    with open(report, "w") as f:
      json.dump(result, f)
    return f"({result.get('num_examples')} validation images)"


if __name__ == "__main__":
  Rehearsal(_args()).main()
