"""What every command-line entry point shares: the config flag, multi-process start-up,
and user mistakes reported as one line (exit code 2) instead of a traceback.

The entry-point layer: library modules never import this one. Only ``UserError``
(``deit_jax.errors``) and the OS errors of paths the user named
(``errors.USER_OS_ERRORS``) become ``error: ...``; anything else keeps its traceback.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from deit_jax import files, processes  # noqa: E402
from deit_jax.errors import USER_OS_ERRORS, UserError  # noqa: E402

FLAGS = flags.FLAGS
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, *USER_OS_ERRORS)


def define_flags() -> None:
  """--config (locked: a mistyped --config.key is an error) and the process flags."""
  config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 (multi-process without a cluster manager)")
  flags.DEFINE_integer("num_processes", None, "processes in the job")
  flags.DEFINE_integer("process_id", None, "this process's index")
  flags.DEFINE_bool("multihost", False,
                    "jax.distributed.initialize() from the cluster environment (TPU pod, SLURM)")
  flags.DEFINE_integer("cpu_devices", None, "run on N simulated CPU devices (the CPU only)")
  flags.mark_flag_as_required("config")


def define_checkpoint_flags(default_split: str) -> None:
  """--checkpoint, --ema and --split of the commands that run a saved model over a split."""
  flags.DEFINE_string("checkpoint", None, "training workdir, orbax step or model directory")
  flags.DEFINE_bool("ema", False, "use the checkpoint's EMA parameters")
  flags.DEFINE_string("split", None, f"dataset split (default: the config's {default_split})")


def initialize_processes() -> None:
  """Joins the multi-process job the flags describe (``deit_jax.processes`` picks the
  arguments: all of a node's GPUs per process); a GPU process that ends up driving another
  number of GPUs than its node grants it stops with one line."""
  if FLAGS.cpu_devices:  # on the CPU only, even where libtpu or a GPU plugin is installed
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
  with one_line_errors():
    kwargs = processes.distributed_kwargs(FLAGS.coordinator_address, FLAGS.num_processes,
                                          FLAGS.process_id, FLAGS.multihost)
  if kwargs is None:
    return
  if FLAGS.coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  problem = processes.device_count_problem(jax.local_devices()[0].platform,
                                           jax.local_device_count())
  if problem:
    fail(f"process {jax.process_index()}: {problem}")


def run(body: Callable[[object], object]) -> None:
  """``app.run`` of ``body(config)`` after flag parsing, process start-up and config
  loading; user mistakes anywhere become ``error: <one line>`` and exit code 2."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_logs()
    # Imported here, not above: the benchmark and convert use this module without TF.
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # TF only feeds data; never the accelerator
    initialize_processes()
    try:
      config = FLAGS.config
      config.dataset  # noqa: B018 - config_flags reports a bad config file only on first use
    except OSError as e:
      fail(str(e).split("The above exception")[0])
    with one_line_errors():
      body(config)

  app.run(main, flags_parser=parse_flags)


def run_plain(body: Callable[[], object]) -> None:
  """``app.run`` of ``body()`` for entry points without a config (benchmark, convert)."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_logs()
    with one_line_errors():
      code = body()
    sys.exit(code or 0)

  app.run(main, flags_parser=parse_flags)


def parse_argv(define: Callable[[flags.FlagValues], None], argv: list[str], prog: str,
               epilog: str = "") -> tuple[flags.FlagValues, list[str]]:
  """Parses ``argv`` (without the program name) into fresh absl FlagValues that
  ``define(flag_values)`` fills: for entry points that are also called in-process (the
  benchmark, convert), so that nothing carries over between calls. Returns the values and
  the positional arguments; a bad flag raises ``UserError``; --help prints and exits."""
  values = flags.FlagValues()
  define(values)
  if any(a in ("--help", "-h", "--helpfull") for a in argv):
    print(f"usage: {prog} ...\n\n{values.get_help()}" + (f"\n\n{epilog}" if epilog
                                                                   else ""))
    raise SystemExit(0)
  try:
    rest = values([prog, *argv])
  except flags.Error as e:
    raise UserError(str(e)) from None
  return values, rest[1:]


def run_argv(define: Callable[[flags.FlagValues], None], argv: list[str], prog: str,
             body: Callable[[flags.FlagValues, list[str]], object]) -> int:
  """``parse_argv``, then ``body(values, positional)``: returns 0, or 2 after one line
  ``error: ...`` on a user mistake (for ``sys.exit``)."""
  try:
    body(*parse_argv(define, argv, prog))
  except USER_ERRORS as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  return 0


def quiet_logs() -> None:
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
    logging.set_verbosity(logging.WARNING)  # orbax/TF chatter; progress lines are printed


class one_line_errors:  # noqa: N801 - used like contextlib's lower-case managers
  """``with one_line_errors(): ...`` turns a user error into ``error: ...``, exit 2."""

  def __enter__(self):
    return self

  def __exit__(self, kind, error, traceback):
    if kind is not None and issubclass(kind, USER_ERRORS):
      fail(str(error))
    return False


def parse_flags(argv):
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


_LOG: list = []  # the open log_file of this process, if any


def say(message: str) -> None:
  """Progress output, from process 0 only; also into the file of an open ``log_file``."""
  if jax.process_index() == 0:
    print(message, flush=True)
    _log_line(message)


def _log_line(message: str) -> None:
  if not _LOG or _LOG[-1] is None:
    return
  try:
    _LOG[-1].write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {message}")
  except Exception as e:  # noqa: BLE001 - a log that cannot be written never stops a run
    print(f"warning: cannot write the log {_LOG[-1].path} ({e}); it stops here",
          file=sys.stderr, flush=True)
    _LOG[-1] = None


class log_file:  # noqa: N801 - used like contextlib's lower-case managers
  """``with log_file(path): ...``: process 0's ``say`` lines also go to ``path`` (local or
  ``gs://``), each with the time, appended and flushed line by line (``files.AppendLog``),
  so a log in the workdir outlives the VM that wrote it; each run starts with a line naming
  its host and command, and one that stops on an exception ends with it. A log that cannot
  be written is reported once on stderr and dropped; the run goes on."""

  def __init__(self, path):
    self.path = path

  def __enter__(self):
    if jax.process_index() == 0:
      _LOG.append(files.AppendLog(self.path))
      _log_line(f"--- {socket.gethostname()} pid {os.getpid()}: {' '.join(sys.argv)}")
    return self

  def __exit__(self, kind, error, traceback):
    if jax.process_index() == 0:
      if kind is not None:
        _log_line(f"stopped by {kind.__name__}: {error}")
      log = _LOG.pop()
      try:
        if log is not None:
          log.close()
      except Exception as e:  # noqa: BLE001 - as in _log_line
        print(f"warning: cannot close the log {log.path} ({e})", file=sys.stderr, flush=True)
    return False
