"""The run builder: model, optimizer and schedule, state shardings, initial or restored
state, train step and eval step, built by the same functions for training
(``deit_jax.main``), evaluation (``deit_jax.evaluate``) and the benchmark
(``deit_jax.bench.benchmark``) -- so the benchmark times exactly the step that trains.

The ``build_*`` functions take plain values; ``*_from_config`` read them from a run
config (``configs/``), checked here. Free of TensorFlow (the benchmark imports it); the
data side of a config is ``deit_jax.config_glue``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from deit_jax import checkpoint, optim, sharding, train_step as ts
from deit_jax.data import mixup
from deit_jax.errors import ConfigError, UserError, class_mismatch
from deit_jax.eval_step import make_eval_step
from deit_jax.losses import DISTILLATIONS, KL_REDUCTIONS
from deit_jax.models import create_model, pretrained, resample_pos_embed

# ---------------------------------------------------------------------------
# Config values
# ---------------------------------------------------------------------------


def model_overrides(config) -> dict:
  # None: the architecture's own value (a placeholder field, e.g. the recipe's depth)
  overrides = {k: v for k, v in config.model.to_dict().items()
               if k != "name" and v is not None}
  overrides["num_classes"] = config.num_classes
  return overrides


def mixup_config(config) -> mixup.MixupConfig:
  """``config.mixup`` with one draw per ``config.batch_groups`` group of the batch."""
  return mixup.MixupConfig(**config.mixup.to_dict(), groups=config.get("batch_groups", 1))


def loss_config(config) -> ts.LossConfig:
  d = config.distill
  return ts.LossConfig(config.num_classes, d.type, d.alpha, d.tau, d.kl_reduction,
                       config.mixup.label_smoothing, d.hard_smoothing)


def check_distillation(config, model_config) -> None:
  """``distill.type`` against the model: a distillation head needs a teacher. A plain model
  with a teacher distils through its class token alone (the paper's Table 3 rows)."""
  d, name = config.distill, config.model.name
  if d.type not in DISTILLATIONS:
    raise ConfigError(f"distill.type must be none, soft or hard, got {d.type!r}")
  if d.kl_reduction not in KL_REDUCTIONS:
    raise ConfigError(f"distill.kl_reduction must be one of {KL_REDUCTIONS}, got "
                      f"{d.kl_reduction!r}")
  distilled = getattr(model_config, "distilled", False)
  if d.type == "none" and distilled:
    raise ConfigError(f"{name} has a distillation head, which distill.type=none would leave "
                      "untrained (spoiling the head average): train the plain model "
                      f"({name.replace('_distilled', '')}) or set distill.type")


# ---------------------------------------------------------------------------
# Model, optimizer
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
  """A registered model with its overrides: ``make()`` builds it initialised (call it
  under jit), ``abstract`` is its shape-only twin, ``definition`` the static graph."""

  name: str
  overrides: dict[str, Any]
  make: Callable[[], nnx.Module]
  abstract: nnx.Module
  definition: ts.ModelDef

  @property
  def config(self):
    return self.abstract.config


def build_model(name: str, overrides: dict[str, Any], *, seed: int = 0) -> Model:
  make = lambda: create_model(name, seed=seed, **overrides)
  abstract = nnx.eval_shape(make)
  return Model(name, dict(overrides), make, abstract, ts.ModelDef.of(abstract))


def build_optimizer(model: Model, *, lr: float, total_steps: int, warmup_steps: int,
                    warmup_lr: float = 1e-6, min_lr: float = 1e-5, weight_decay: float = 0.05,
                    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                    grad_clip_norm: float | None = None, name: str = "adamw",
                    momentum: float = 0.9, schedule: str = "step", steps_per_epoch: int = 0,
                    decay_dist_token: bool = True):
  """(the optimizer ``name`` with DeiT's no-decay set -- AdamW by default, or SGD --, its
  warm-up + cosine schedule): ``schedule="epoch"`` is timm's per-epoch schedule as the
  official loop steps it (``optim.epoch_cosine``; ``total_steps`` and ``warmup_steps``,
  divided by ``steps_per_epoch``, give its epochs), "step" the per-step one."""
  if schedule == "epoch":
    epochs = total_steps / max(steps_per_epoch, 1)
    lr_schedule = optim.epoch_cosine(lr, steps_per_epoch, epochs,
                                     warmup_steps / max(steps_per_epoch, 1), warmup_lr, min_lr)
  elif schedule == "step":
    lr_schedule = optim.warmup_cosine(lr, total_steps, warmup_steps, warmup_lr, min_lr)
  else:
    raise ConfigError(f"optimizer.schedule must be one of {optim.SCHEDULES}, got {schedule!r}")
  tx = optim.create(name, lr_schedule, nnx.to_pure_dict(model.definition.params_template),
                    weight_decay=weight_decay, b1=b1, b2=b2, eps=eps, momentum=momentum,
                    grad_clip_norm=grad_clip_norm or None, decay_dist_token=decay_dist_token)
  return tx, lr_schedule


def model_from_config(config) -> Model:
  model = build_model(config.model.name, model_overrides(config), seed=config.seed)
  check_distillation(config, model.config)
  return model


def warmup_steps(opt, steps_per_epoch: int) -> int:
  """``optimizer.warmup_steps`` when it is 0 or more (0: no warm-up), else (-1 or None)
  ``optimizer.warmup_epochs`` of ``steps_per_epoch``."""
  steps = opt.get("warmup_steps")
  if steps is not None and steps >= 0:
    return int(steps)
  return int(round(opt.warmup_epochs * steps_per_epoch))


def optimizer_from_config(config, model: Model, *, steps_per_epoch: int, total_steps: int):
  """(tx, schedule, base lr): ``optimizer.lr`` is per ``lr_scale_batch`` examples."""
  opt = config.optimizer
  base_lr = opt.lr * config.batch_size / config.lr_scale_batch
  warmup = warmup_steps(opt, steps_per_epoch)
  tx, schedule = build_optimizer(model, lr=base_lr, total_steps=total_steps,
                                 warmup_steps=warmup, warmup_lr=opt.warmup_lr,
                                 min_lr=opt.min_lr, weight_decay=opt.weight_decay, b1=opt.b1,
                                 b2=opt.b2, eps=opt.eps, grad_clip_norm=opt.grad_clip_norm,
                                 name=opt.name, momentum=opt.momentum,
                                 schedule=opt.get("schedule", "epoch"),
                                 steps_per_epoch=steps_per_epoch,
                                 decay_dist_token=opt.get("decay_dist_token", True))
  return tx, schedule, base_lr


def total_steps(config, steps_per_epoch: int) -> int:
  return (config.total_steps if config.total_steps > 0
          else int(round(config.num_epochs * steps_per_epoch)))


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------


def build_state(model: Model, tx, mesh, *, seed: int, ema: bool):
  """(state shardings, jitted ``init() -> TrainState`` placed with them)."""
  state_sharding = ts.state_shardings(model.abstract, tx, mesh, ema=ema)
  init = jax.jit(lambda: ts.init_state(model.make(), tx, seed, ema),
                 out_shardings=state_sharding)
  return state_sharding, init


def run_metadata(config, model: Model, class_names=(), steps_per_epoch: int = 0) -> dict:
  """What a training checkpoint records of its run (and a resume compares): with the
  training data's class names, which evaluation, fine-tuning and teachers compare too, and
  the epoch length, which places every step's examples and learning rate."""
  return {"model": model.name, "model_config": json.loads(json.dumps(model.overrides)),
          "num_classes": config.num_classes, "dataset": config.dataset,
          "ema": bool(config.ema_decay), "class_names": [str(n) for n in class_names],
          "steps_per_epoch": steps_per_epoch}


def initial_state(checkpoints: checkpoint.TrainCheckpoints, meta: dict, init,
                  state_sharding, *, model: Model, init_from: str = "",
                  init_from_head: str = "auto", log=print):
  """(state, start step): the latest checkpoint in the workdir, else ``init()`` (then
  parameters from ``init_from`` when given)."""
  latest = checkpoints.latest_step()
  if latest is None:
    state = init()
    if init_from:
      state = _init_from(state, init_from, model.overrides, state_sharding, init_from_head,
                         log, meta.get("class_names"))
    return state, 0
  # The order matters: check the checkpoint belongs to this run before anything else.
  checkpoints.check_compatible(latest, meta)
  abstract_state = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      jax.eval_shape(init), state_sharding)
  state, data_state = checkpoints.restore(latest, abstract_state)
  return state, int(data_state["step"])


_HEADS = ("head", "head_dist")  # classifier layers: re-initialised on a new class count


def _init_from(state, path, overrides, state_sharding, head="auto", log=print,
               class_names=None):
  """Fine-tuning start: parameters of a model directory (e.g. converted official/timm
  weights), a training workdir, one of its checkpoints or published weights by name
  (``deit_jax.models.pretrained``: downloaded, verified and converted once). Classifier heads of
  another class count keep this run's fresh initialisation (both heads of a distilled
  model); a position embedding of another resolution is resampled to this model's grid
  (bicubic, like the official fine-tuning code). ``head="reset"`` re-initialises the heads
  whatever their shape (new classes of the same count). Heads kept for data whose class
  names differ from those the checkpoint recorded are an error. Anything else that
  differs is an error."""
  if head not in ("auto", "reset"):
    raise ConfigError(f"init_from_head must be 'auto' or 'reset', got {head!r}")
  numerics = {k: v for k, v in overrides.items()
              if k in ("dtype", "remat", "drop_rate", "drop_path_rate", "attn_drop_rate")}
  if pretrained.is_pretrained_name(path):  # the published model; heads and grid fit below
    model = pretrained.load(path, **numerics)
  else:
    model, info = checkpoint.load_trained_model(path, **numerics)
    same_count = model.config.num_classes == overrides.get("num_classes")
    classes = class_mismatch(info.get("class_names"), class_names, f"init_from {path}")
    if head == "auto" and same_count and classes:
      raise UserError(f"{classes}; its heads would predict the wrong classes: "
                      "--config.init_from_head=reset starts new ones")
  params = nnx.to_pure_dict(ts.split_model(model)[1])
  if jax.tree.structure(params) != jax.tree.structure(state.params):
    raise UserError(f"init_from {path}: a {type(model).__name__} with other parameters than "
                    "the configured model (e.g. distilled vs plain, or another depth)")
  reinitialised, resampled = [], []

  def fit(key_path, loaded, target):
    name = jax.tree_util.keystr(key_path)
    if key_path[0].key in _HEADS and (head == "reset" or loaded.shape != target.shape):
      reinitialised.append(name)
      return target
    if loaded.shape == target.shape:
      return loaded
    if name.endswith("['pos_embed']"):
      grid = int(round((target.shape[1] - model.config.num_prefix_tokens) ** 0.5))
      resampled.append(f"{loaded.shape[1]} -> {target.shape[1]} tokens")
      return resample_pos_embed(np.asarray(loaded), model.config.num_prefix_tokens, grid)
    raise UserError(f"init_from {path}: {name} has shape {loaded.shape}, the configured "
                    f"model needs {target.shape} (patch size, channels and widths must match)")

  params = jax.tree_util.tree_map_with_path(fit, params, state.params)
  log(f"init_from {path}"
      + (f": re-initialised {', '.join(reinitialised)} (checkpoint predicts "
         f"{model.config.num_classes} classes, this run {overrides['num_classes']}"
         + (", init_from_head=reset)" if head == "reset" else ")") if reinitialised else "")
      + (f"; position embedding resampled {resampled[0]}" if resampled else ""))
  params = jax.device_put(params, state_sharding.params)
  # EMA starts from the same values in its own buffers (the step donates both).
  ema = jax.tree.map(lambda x: x.copy(), params) if state.ema else state.ema
  return state._replace(params=params, ema=ema)


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------


class TrainStep:
  """The jitted, sharded, state-donating train step, ``step(state, batch) -> (state,
  metrics)``, with an online teacher's weights passed along."""

  def __init__(self, jitted, extra_args: tuple = ()):
    self.jitted, self.extra_args = jitted, tuple(extra_args)

  def __call__(self, state, batch):
    return self.jitted(state, batch, *self.extra_args)

  def compile(self, state, batch):
    """The step compiled ahead of time for these shapes: call it as ``compiled(state,
    batch, *self.extra_args)`` (the benchmark times compilation apart)."""
    return self.jitted.lower(state, batch, *self.extra_args).compile()


def build_train_step(model: Model, tx, schedule, state_sharding, mesh, *,
                     loss_config: ts.LossConfig, mixup_config: mixup.MixupConfig | None,
                     teacher, ema_decay: float, grad_accum_steps: int = 1) -> TrainStep:
  """``teacher``: a ``deit_jax.teacher.feed.Teacher`` (the batch keys, an online model)."""
  step_fn = ts.make_train_step(model.definition, tx, schedule, loss_config, mixup_config,
                               ema_decay=ema_decay, grad_accum_steps=grad_accum_steps,
                               teacher_def=teacher.model_def)
  jitted = ts.jit_train_step(step_fn, state_sharding, mesh, teacher.batch_keys,
                             teacher.sharding)
  return TrainStep(jitted, teacher.step_args)


def train_step_from_config(config, model: Model, tx, schedule, state_sharding, mesh,
                           teacher) -> TrainStep:
  return build_train_step(model, tx, schedule, state_sharding, mesh,
                          loss_config=loss_config(config),
                          mixup_config=mixup_config(config), teacher=teacher,
                          ema_decay=config.ema_decay, grad_accum_steps=config.grad_accum_steps)


def build_eval_step(model_def: ts.ModelDef, params_sharding, rest_sharding, mesh) -> Callable:
  """Jitted ``(params, rest, batch) -> sums`` (``deit_jax.eval_step``)."""
  return jax.jit(sharding.on_mesh(make_eval_step(model_def), mesh),
                 in_shardings=(params_sharding, rest_sharding, sharding.batch_sharding(mesh)))


def device_put_model(model: nnx.Module, mesh):
  """(params, rest) of a loaded model on the mesh, with their shardings."""
  _, params, rest = ts.split_model(model)
  params_sharding, rest_sharding = ts.model_shardings(model, mesh)
  return (jax.device_put(nnx.to_pure_dict(params), params_sharding),
          jax.device_put(nnx.to_pure_dict(rest), rest_sharding), params_sharding,
          rest_sharding)

