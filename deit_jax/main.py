"""Train (and periodically evaluate) a DeiT from a config file.

    python -m deit_jax.main --config=configs/<file>.py --workdir=DIR [--config.key=value ...]

Reads top to bottom: hosts, mesh, input, model and optimizer, shardings, restore, steps,
loop. A workdir that holds checkpoints is resumed from its latest complete one, exactly
(the data stream continues at the saved step). A SIGTERM to any process stops every process
at the same step, which is saved; then they exit cleanly.
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
import time

import jax
import numpy as np
import tensorflow as tf
from absl import flags

from deit_jax import builder, checkpoint, cli, config_glue, files, health, sharding
from deit_jax.cli import say
from deit_jax.data import feeding, pipeline
from deit_jax.errors import UserError
from deit_jax.eval_step import evaluate
from deit_jax.teacher.feed import EVAL_KEYS, Teacher


class _Writer:
  """metrics.jsonl + TensorBoard events, written by process 0 only. On a ``gs://`` workdir
  neither waits for the bucket: metrics.jsonl is a background ``files.AppendLog``, and the
  events go through one background thread that flushes them at most every
  ``files.REMOTE_INTERVAL_S`` (an events file is one object, re-uploaded whole per flush)."""

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    if self.active:
      self._jsonl = files.AppendLog(files.join(workdir, "metrics.jsonl"))
      self._tb = tf.summary.create_file_writer(files.join(workdir, "tensorboard"),
                                               max_queue=10_000, flush_millis=10 ** 9)
      self._background = None if files.is_local(workdir) else \
          concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tensorboard")
      self._flushed = time.time()

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    self._jsonl.write(json.dumps({"step": step, **metrics}))
    if self._background is None:
      self._scalars(step, metrics, flush=True)
    else:
      self._background.submit(self._scalars, step, metrics,
                              flush=time.time() - self._flushed >= files.REMOTE_INTERVAL_S)

  def _scalars(self, step: int, metrics: dict, flush: bool) -> None:
    try:
      with self._tb.as_default(step=step):
        for key, value in metrics.items():
          tf.summary.scalar(key, value)
      if flush:
        self._flushed = time.time()
        self._tb.flush()
    except Exception as e:  # noqa: BLE001 - events that cannot be written never stop a run
      print(f"warning: TensorBoard events not written at step {step} "
            f"({type(e).__name__}: {str(e)[:200]})", file=sys.stderr, flush=True)

  def close(self):
    if self.active:
      self._jsonl.close()
      if self._background is not None:
        self._background.shutdown(wait=True)
      self._tb.close()


def train(config, workdir: str) -> dict:
  """Runs (or resumes) training; returns the last eval metrics. Process 0's progress
  lines also go to <workdir>/train.log (``cli.log_file``; a resumed run appends)."""
  with cli.log_file(files.join(workdir, "train.log")):
    return _train(config, workdir)


def _train(config, workdir: str) -> dict:
  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh.to_dict())
  say(f"mesh {dict(mesh.shape)} over {jax.device_count()} device(s), "
      f"{jax.process_count()} process(es)")
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.batch_size % shards:  # before any checkpoint is opened (a resume onto this layout)
    raise UserError(f"global batch {config.batch_size} does not split over the {shards} batch "
                    f"shards (data x fsdp) of mesh {dict(mesh.shape)}: use a batch size that "
                    f"is a multiple of {shards} or another device count")

  # ---------------------------------------------------------------- input
  train_source = config_glue.open_split(config, config.train_split)
  eval_source = config_glue.open_split(config, config.eval_split)
  augment = config_glue.augment_config(config)
  host = config_glue.host_slice(config.batch_size, config.batch_groups)
  steps_per_epoch = pipeline.steps_per_epoch(train_source.num_examples, host.global_batch,
                                             repeats=augment.repeated_aug, groups=host.groups)
  total_steps = builder.total_steps(config, steps_per_epoch)

  # ---------------------------------------------------------------- model, teacher, optimizer
  model = builder.model_from_config(config)
  # The teacher is checked against the data before any compute.
  teacher = config_glue.make_teacher(config, train_source, augment, mesh)
  tx, schedule, base_lr = builder.optimizer_from_config(config, model,
                                                        steps_per_epoch=steps_per_epoch,
                                                        total_steps=total_steps)

  # ---------------------------------------------------------------- shardings, state
  state_sharding, init = builder.build_state(model, tx, mesh, seed=config.seed,
                                             ema=config.ema_decay > 0)
  meta = builder.run_metadata(config, model, train_source.class_names, steps_per_epoch)
  best = None
  if config.best_metric:  # checked before any checkpoint is opened
    allowed = checkpoint.best_metrics(config.ema_decay > 0)
    if config.best_metric not in allowed or config.eval_every_steps < 0:
      raise UserError(f"best_metric={config.best_metric!r} needs evaluation "
                      f"(eval_every_steps >= 0) and one of {', '.join(allowed)}")
    best = checkpoint.BestCheckpoint(workdir, config.best_metric)
  checkpoints = checkpoint.TrainCheckpoints(workdir, every_steps=config.checkpoint_every_steps,
                                            keep=config.keep_checkpoints)
  try:
    state, start_step = builder.initial_state(checkpoints, meta, init, state_sharding,
                                              model=model, init_from=config.init_from,
                                              init_from_head=config.init_from_head, log=say)
  except BaseException:  # e.g. a foreign checkpoint: orbax's threads must not outlive it
    checkpoints.close()
    raise
  if start_step:
    say(f"resumed from {checkpoints.directory} at step {start_step}")

  # ---------------------------------------------------------------- steps
  train_step = builder.train_step_from_config(config, model, tx, schedule, state_sharding,
                                              mesh, teacher)
  eval_step = builder.build_eval_step(model.definition, state_sharding.params,
                                      state_sharding.rest, mesh)

  def run_eval(params):
    batches = feeding.eval_batches(eval_source, augment, host, mesh, Teacher(EVAL_KEYS))
    return evaluate(eval_step, params, state.rest, batches)

  # ---------------------------------------------------------------- loop
  warning = checkpoints.watch_preemption(start_step)
  if warning:
    say(f"warning: {warning}")
  writer = _Writer(workdir)
  batches, stream = feeding.train_batches(train_source, augment, host, mesh, teacher,
                                         seed=config.seed, start_step=start_step)
  eval_metrics = {}
  timer = health.StepTimer(config.batch_size, model.config, list(mesh.devices.flat))
  if start_step >= total_steps:
    say(f"{workdir} already holds the final step {start_step} of {total_steps}; nothing to do")
  else:
    say(f"training steps {start_step + 1}..{total_steps} ({steps_per_epoch} per epoch), "
        f"global batch {config.batch_size}, lr {base_lr:.3g}")
  for step in range(start_step + 1, total_steps + 1):
    state, metrics = train_step(state, timer.next(batches))
    last = step == total_steps
    stop = checkpoints.reached_preemption(step)  # once a step: the same step on every process
    saving = checkpoints.should_save(step) or last or stop
    if step % config.log_every_steps == 0 or saving:
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not np.isfinite(values["train_loss"]):
        checkpoints.close()
        if best is not None:
          best.close()
        raise UserError(f"loss is {values['train_loss']} at step {step}; stopped. The last "
                        f"checkpoint (step {checkpoints.latest_step()}) is kept")
      values.update(timer.window())  # step time, input wait, img/s, MFU
      values["input_skipped"] = stream.skipped  # corrupt examples dropped (this process)
      rate = values["images_per_sec"]
      eta = (total_steps - step) * config.batch_size / rate
      if step % config.log_every_steps == 0 or last:
        say(f"step {step}/{total_steps}  loss {values['train_loss']:.4f}  "
            f"lr {values['lr']:.3g}  {rate:.1f} img/s  {timer.describe(values)}  "
            f"ETA {health.duration(eta)}")
        writer.write(step, values)
    if (config.eval_every_steps > 0 and step % config.eval_every_steps == 0) or (
        last and config.eval_every_steps >= 0):  # < 0: no evaluation at all
      eval_start = time.time()
      eval_metrics = {f"eval_{k}": v for k, v in run_eval(state.params).items()}
      if config.ema_decay > 0:  # the EMA weights beside the raw ones
        eval_metrics.update({f"eval_ema_{k}": v for k, v in run_eval(state.ema).items()
                             if k != "num_examples"})
      writer.write(step, eval_metrics)
      say(f"eval at step {step}: " + "  ".join(f"{k[5:]} {v:.4g}" for k, v in
                                                eval_metrics.items()))
      if best is not None and best.update(step, eval_metrics, state, meta):
        say(f"best {best.metric} so far ({best.value:.4g}): saved to {best.directory}")
      timer.exclude(time.time() - eval_start)
    if saving:
      checkpoints.save(step, state, {"step": step}, meta, force=True)
    if stop:
      say(f"SIGTERM: saved step {step} to {checkpoints.directory}; exiting")
      break
  checkpoints.close()
  if best is not None:
    best.close()
  writer.close()
  if timer.steps:
    say(timer.summary())
  return eval_metrics


def main() -> None:
  cli.define_flags()
  workdir = flags.DEFINE_string("workdir", None, "run directory (local or gs://)")
  flags.mark_flag_as_required("workdir")
  cli.run(lambda config: train(config, workdir.value))


if __name__ == "__main__":
  main()
