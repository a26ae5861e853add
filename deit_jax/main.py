"""Train (and periodically evaluate) a DeiT from a config file.

    python -m deit_jax.main --config=configs/<file>.py --workdir=DIR [--config.key=value ...]

Reads top to bottom: hosts, mesh, input, model and optimizer, shardings, restore, steps,
loop. A workdir that holds checkpoints is resumed from its latest complete one, exactly
(the data stream continues at the saved step); SIGTERM saves and exits cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from deit_jax import checkpoint, cli, optim, sharding, train_step as ts
from deit_jax.cli import UserError, say as _say
from deit_jax.data import feeding, mixup, pipeline
from deit_jax.evaluate import evaluate, make_eval_step
from deit_jax.models import create_model
from deit_jax.teacher.feed import TeacherFeed


class _Writer:
  """metrics.jsonl + TensorBoard events, written by process 0 only."""

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    if self.active:
      import tensorflow as tf
      tf.io.gfile.makedirs(workdir)
      self._jsonl = tf.io.gfile.GFile(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    import tensorflow as tf
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    with self._tb.as_default(step=step):
      for key, value in metrics.items():
        tf.summary.scalar(key, value)
    self._tb.flush()

  def close(self):
    if self.active:
      self._jsonl.close()
      self._tb.close()


class RunSteps(NamedTuple):
  """What ``build_steps`` makes of a config: the jitted functions the trainer runs."""
  name: str
  overrides: dict
  model_def: ts.ModelDef
  base_lr: float
  state_sharding: ts.TrainState
  batch_sharding: jax.sharding.NamedSharding
  init: Callable         # () -> TrainState, jitted onto state_sharding
  train_step: Callable   # jitted (state, batch[, teacher]) -> (state, metrics), state donated
  eval_step: Callable    # jitted (params, rest, batch) -> sums


def build_steps(config, mesh, steps_per_epoch: int, total_steps: int, teacher) -> RunSteps:
  """Model, optimizer and schedule, state shardings and the jitted train/eval steps of a
  config on ``mesh``. ``teacher`` is a ``TeacherFeed`` (or anything with its
  ``model_def``, ``batch_keys`` and ``sharding``). Nothing here touches data or devices'
  memory, so ``deit_jax.bench.pod_compile`` builds the very same steps for a TPU topology."""
  name, overrides = config.model.name, cli.model_overrides(config)
  make_model = lambda: create_model(name, seed=config.seed, **overrides)
  abstract_model = nnx.eval_shape(make_model)
  model_def = ts.ModelDef.of(abstract_model)
  if config.distill.type == "none" and getattr(abstract_model.config, "distilled", False):
    raise UserError(f"{name} has a distillation head, which distill.type=none would leave "
                    "untrained (spoiling the head average): train the plain model "
                    f"({name.replace('_distilled', '')}) or set distill.type")
  opt = config.optimizer
  base_lr = opt.lr * config.batch_size / config.lr_scale_batch
  warmup = opt.warmup_steps if opt.warmup_steps >= 0 else 0
  warmup = warmup or int(round(opt.warmup_epochs * steps_per_epoch))
  schedule = optim.warmup_cosine(base_lr, total_steps, warmup, opt.warmup_lr, opt.min_lr)
  tx = optim.adamw(schedule, nnx.to_pure_dict(model_def.params_template),
                   weight_decay=opt.weight_decay, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                   grad_clip_norm=opt.grad_clip_norm or None)

  state_sharding = ts.state_shardings(abstract_model, tx, mesh, ema=config.ema_decay > 0)
  init = jax.jit(lambda: ts.init_state(make_model(), tx, config.seed, config.ema_decay > 0),
                 out_shardings=state_sharding)
  mixup_config = mixup.MixupConfig(**config.mixup.to_dict())
  loss_config = ts.LossConfig(config.num_classes, config.distill.type, config.distill.alpha,
                              config.distill.tau, config.distill.kl_reduction,
                              config.mixup.label_smoothing)
  step_fn = ts.make_train_step(model_def, tx, schedule, loss_config, mixup_config,
                               ema_decay=config.ema_decay,
                               grad_accum_steps=config.grad_accum_steps,
                               mixup_groups=1, teacher_def=teacher.model_def)
  train_step = ts.jit_train_step(step_fn, state_sharding, mesh, teacher.batch_keys,
                                 teacher.sharding)
  batch_sharding = sharding.batch_sharding(mesh)
  eval_step = jax.jit(make_eval_step(model_def),
                      in_shardings=(state_sharding.params, state_sharding.rest,
                                    batch_sharding))
  return RunSteps(name, overrides, model_def, base_lr, state_sharding, batch_sharding, init,
                  train_step, eval_step)


def train(config, workdir: str) -> dict:
  """Runs (or resumes) training; returns the last eval metrics."""
  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh.to_dict())
  _say(f"mesh {dict(mesh.shape)} over {jax.device_count()} device(s), "
       f"{jax.process_count()} process(es)")

  # ---------------------------------------------------------------- input
  train_source = cli.open_split(config, config.train_split)
  eval_source = cli.open_split(config, config.eval_split)
  augment = cli.augment_config(config)
  teacher = TeacherFeed(config, train_source, augment, mesh)  # validated before any compute
  host_sharding = pipeline.Sharding(config.batch_size, jax.process_index(), jax.process_count())
  steps_per_epoch = pipeline.steps_per_epoch(train_source.num_examples, config.batch_size)
  total_steps = (config.total_steps if config.total_steps > 0
                 else int(round(config.num_epochs * steps_per_epoch)))

  # ---------------------------------------------------------------- model, optimizer, steps
  run = build_steps(config, mesh, steps_per_epoch, total_steps, teacher)
  name, overrides, state_sharding, init = run.name, run.overrides, run.state_sharding, run.init
  train_step, eval_step, batch_sharding = run.train_step, run.eval_step, run.batch_sharding
  meta = {"model": name, "model_config": json.loads(json.dumps(overrides)),
          "num_classes": config.num_classes, "dataset": config.dataset}

  checkpoints = checkpoint.TrainCheckpoints(workdir, every_steps=config.checkpoint_every_steps,
                                            keep=config.keep_checkpoints)
  latest = checkpoints.latest_step()
  if latest is not None:
    # The order matters: check the checkpoint belongs to this run before anything else.
    checkpoints.check_compatible(latest, meta)
    abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                      sharding=sh),
                                  jax.eval_shape(init), state_sharding)
    state, data_state = checkpoints.restore(latest, abstract_state)
    start_step = int(data_state["step"])
    _say(f"resumed from {checkpoints.directory} at step {start_step}")
  else:
    state, start_step = init(), 0
    if config.init_from:
      state = _init_from(state, config.init_from, overrides, state_sharding)

  def run_eval():
    batches = feeding.prefetch_to_device(
        pipeline.eval_dataset(eval_source, augment, pipeline.Sharding(
            config.batch_size, jax.process_index(), jax.process_count())).as_numpy_iterator(),
        batch_sharding)
    return evaluate(eval_step, state.params, state.rest, batches)

  # ---------------------------------------------------------------- loop
  preempted = []
  signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  writer = _Writer(workdir)
  train_iter = pipeline.TrainIterator(train_source, augment, host_sharding, seed=config.seed,
                                      start_step=start_step, views=teacher.views)
  batches = feeding.prefetch_to_device(map(teacher.join, train_iter), batch_sharding)
  eval_metrics, window_start, window_steps = {}, time.time(), 0
  if start_step >= total_steps:
    _say(f"{workdir} already holds the final step {start_step} of {total_steps}; nothing to do")
  else:
    _say(f"training steps {start_step + 1}..{total_steps} ({steps_per_epoch} per epoch), "
         f"global batch {config.batch_size}, lr {run.base_lr:.3g}")
  for step in range(start_step + 1, total_steps + 1):
    state, metrics = train_step(state, next(batches), *teacher.step_args)
    window_steps += 1
    last = step == total_steps
    stop = bool(preempted)  # read once: a signal between two reads must not skip the save
    saving = checkpoints.should_save(step) or last or stop
    if step % config.log_every_steps == 0 or saving:
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not np.isfinite(values["train_loss"]):
        checkpoints.close()
        raise UserError(f"loss is {values['train_loss']} at step {step}; stopped. The last "
                        f"checkpoint (step {checkpoints.latest_step()}) is kept")
      now = time.time()
      rate = window_steps * config.batch_size / max(now - window_start, 1e-9)
      eta = (total_steps - step) * config.batch_size / rate
      values["images_per_sec"] = rate
      if step % config.log_every_steps == 0 or last:
        _say(f"step {step}/{total_steps}  loss {values['train_loss']:.4f}  "
             f"lr {values['lr']:.3g}  {rate:.1f} img/s  ETA {_duration(eta)}")
        writer.write(step, values)
      window_start, window_steps = now, 0
    if (config.eval_every_steps > 0 and step % config.eval_every_steps == 0) or (
        last and config.eval_every_steps >= 0):  # < 0: no evaluation at all
      eval_metrics = {f"eval_{k}": v for k, v in run_eval().items()}
      writer.write(step, eval_metrics)
      _say(f"eval at step {step}: " + "  ".join(f"{k[5:]} {v:.4g}" for k, v in
                                                 eval_metrics.items()))
    if saving:
      checkpoints.save(step, state, {"step": step}, meta, force=True)
    if stop:
      _say(f"SIGTERM: saved step {step} to {checkpoints.directory}; exiting")
      break
  checkpoints.close()
  writer.close()
  return eval_metrics


def _init_from(state, path, overrides, state_sharding):
  """Fine-tuning start: parameters of a model directory (e.g. converted weights), a
  training workdir or one of its checkpoints. A position embedding of another resolution
  is resampled to this model's grid (bicubic, like the official fine-tuning code)."""
  from deit_jax.convert import resample_pos_embed
  model, _ = checkpoint.load_trained_model(path, **{
      k: v for k, v in overrides.items() if k in ("dtype", "remat", "drop_rate",
                                                  "drop_path_rate", "attn_drop_rate")})
  params = nnx.to_pure_dict(ts.split_model(model)[1])
  if jax.tree.structure(params) != jax.tree.structure(state.params):
    raise UserError(f"init_from {path}: a {type(model).__name__} with other parameters than "
                    "the configured model")

  def fit(key_path, loaded, target):
    if loaded.shape == target.shape:
      return loaded
    if jax.tree_util.keystr(key_path).endswith("['pos_embed']"):
      grid = int(round((target.shape[1] - model.config.num_prefix_tokens) ** 0.5))
      return resample_pos_embed(np.asarray(loaded), model.config.num_prefix_tokens, grid)
    raise UserError(f"init_from {path}: {jax.tree_util.keystr(key_path)} has shape "
                    f"{loaded.shape}, the configured model needs {target.shape} (convert "
                    "with --num-classes to re-initialise the head)")

  params = jax.tree_util.tree_map_with_path(fit, params, state.params)
  params = jax.device_put(params, state_sharding.params)
  # EMA starts from the same values in its own buffers (the step donates both).
  ema = jax.tree.map(lambda x: x.copy(), params) if state.ema else state.ema
  return state._replace(params=params, ema=ema)


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


if __name__ == "__main__":
  cli.define_flags()
  _WORKDIR = cli.flags.DEFINE_string("workdir", None, "run directory (local or gs://)")
  cli.flags.mark_flag_as_required("workdir")
  cli.run(lambda config: train(config, _WORKDIR.value))
