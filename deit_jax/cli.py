"""What every command-line entry point shares: the config flag, multi-process start-up,
config-to-pipeline glue, and user mistakes reported as one line (exit code 2) instead of
a traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


class UserError(Exception):
  """A mistake in the command or config: reported as one line, exit code 2."""


def define_flags() -> None:
  """--config (locked: a mistyped --config.key is an error) and the process flags."""
  config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 (multi-process without a cluster manager)")
  flags.DEFINE_integer("num_processes", None, "processes in the job")
  flags.DEFINE_integer("process_id", None, "this process's index")
  flags.DEFINE_bool("multihost", False,
                    "jax.distributed.initialize() from the cluster environment (TPU pod, SLURM)")
  flags.DEFINE_integer("cpu_devices", None, "simulate N CPU devices")
  flags.mark_flag_as_required("config")


def initialize_processes() -> None:
  if FLAGS.cpu_devices:
    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
  if FLAGS.coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  elif FLAGS.multihost:
    jax.distributed.initialize()


def user_errors() -> tuple[type[BaseException], ...]:
  from deit_jax.checkpoint import CheckpointMismatchError
  from deit_jax.data.sources import DatasetError
  from deit_jax.teacher.store import TeacherLogitsError
  return (UserError, CheckpointMismatchError, DatasetError, TeacherLogitsError,
          FileNotFoundError, FileExistsError, ValueError)


def run(body: Callable[[object], object]) -> None:
  """``app.run`` of ``body(config)`` after flag parsing, process start-up and config
  loading; user mistakes anywhere become ``error: <one line>`` and exit code 2."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
      logging.set_verbosity(logging.WARNING)  # orbax/TF chatter; progress lines are printed
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # TF only feeds data; never the accelerator
    initialize_processes()
    try:
      config = FLAGS.config
      config.dataset  # noqa: B018 - config_flags reports a bad config file only on first use
    except OSError as e:
      fail(str(e).split("The above exception")[0])
    try:
      body(config)
    except user_errors() as e:
      fail(str(e))

  app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv):
  """absl flag parsing, with config mistakes (a mistyped --config.key, a bad value, a
  missing config file) reported as one line instead of a traceback."""
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    fail(f"bad flags or config: {str(e)}")


def fail(message: str):
  text = message.replace("\\n", " ").replace("\\'", "").replace("'", "")
  print(f"error: {' '.join(text.split())}", file=sys.stderr)
  sys.exit(2)


def say(message: str) -> None:
  """Progress output, from process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


# ---------------------------------------------------------------------------
# Config -> objects
# ---------------------------------------------------------------------------

def augment_config(config):
  from deit_jax.data import pipeline
  values = config.aug.to_dict()
  values["randaugment"] = values.get("randaugment") or None
  values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
  return pipeline.AugmentConfig(**values)


def model_overrides(config) -> dict:
  overrides = {k: v for k, v in config.model.to_dict().items() if k != "name"}
  overrides["num_classes"] = config.num_classes
  return overrides


def open_split(config, split: str):
  """``split`` of the config's dataset, narrowed to ``config.subset``: its classes on every
  split, its ``per_class`` examples on the train split only (evaluation keeps every example
  of the kept classes)."""
  from deit_jax.data import sources, subset
  source = sources.open_source(config.dataset, split, data_dir=config.data_dir,
                               manual_dir=config.manual_dir)
  chosen = config.subset
  source = subset.select(source, classes=subset.parse_classes(chosen.classes),
                         per_class=chosen.per_class if split == config.train_split else 0,
                         seed=chosen.seed)
  if source.num_classes != config.num_classes:
    raise UserError(f"config.num_classes={config.num_classes} but {source.name} has "
                    f"{source.num_classes} classes")
  return source


def open_teacher_logits(path: str, source):
  """The store at ``path``, validated against ``source`` before any compute."""
  from deit_jax.teacher.store import TeacherLogits
  logits = TeacherLogits(path)
  logits.validate(dataset=source.name, split=source.split, num_examples=source.num_examples,
                  num_classes=source.num_classes)
  return logits
