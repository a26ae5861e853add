"""The train state and the pure, jitted, sharded train step.

State is plain pytrees (pure dicts of arrays), so it shards, donates and checkpoints
without NNX objects in the way; the model's graph definition is static. The step:

    key      = step_key(state.rng, state.step)
    images, targets, teacher = mixup(key, batch)            # on device, one draw per group
    outputs  = model.train()(images)                         # (cls, dist) or logits
    loss     = deit_loss(outputs, targets, teacher, ...)     # DeiT paper section 4
    params   = AdamW(params, grads); ema = decay * ema + (1 - decay) * params

Compute runs in the model's ``dtype`` (e.g. bfloat16) on float32 master weights; gradient
accumulation splits the batch into micro-batches under ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from deit_jax import losses, sharding
from deit_jax.data import mixup
from deit_jax.errors import ConfigError


class TrainState(NamedTuple):
  step: jax.Array          # int32 scalar
  params: Any              # pure dict of float32 master weights
  rest: Any                # the model's non-parameter state: RNG stream counters, BatchNorm
                           # statistics (the name is in saved checkpoints: kept)
  opt_state: Any
  ema: Any                 # pure dict (model EMA; tracked, not used for eval, as in DeiT)
  rng: jax.Array           # uint32[2] key data for mixup


@dataclasses.dataclass(frozen=True)
class LossConfig:
  num_classes: int
  distillation: str = "none"
  alpha: float = 0.5
  tau: float = 1.0
  kl_reduction: str = "numel"
  label_smoothing: float = 0.1
  hard_smoothing: float = 0.0


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """A model's static graph plus abstract templates of its parameter / other state, to
  rebuild the module from pure dicts inside jitted functions."""

  graphdef: Any
  params_template: nnx.State
  rest_template: nnx.State

  @classmethod
  def of(cls, model: nnx.Module) -> "ModelDef":
    graphdef, params, rest = split_model(model)
    abstract = lambda s: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), s)
    return cls(graphdef, abstract(params), abstract(rest))

  def merge(self, params, rest) -> nnx.Module:
    states = []
    for template, values in ((self.params_template, params), (self.rest_template, rest)):
      state = jax.tree.map(lambda x: x, template)  # fresh Variables, template untouched
      nnx.replace_by_pure_dict(state, values)
      states.append(state)
    return nnx.merge(self.graphdef, *states)


def split_model(model: nnx.Module):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, params, rest


def model_shardings(model: nnx.Module, mesh: Mesh):
  """(params, rest) shardings of a model: parameters by the logical-axis rules, the
  rest (RNG streams, BatchNorm statistics) replicated."""
  _, params, rest = split_model(model)
  return (nnx.to_pure_dict(sharding.state_shardings(params, mesh)),
          jax.tree.map(lambda _: sharding.replicated(mesh), nnx.to_pure_dict(rest)))


def init_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int,
               ema: bool = True) -> TrainState:
  _, params, rest = split_model(model)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                    opt_state=tx.init(params),
                    ema=jax.tree.map(jnp.copy, params) if ema else {},
                    rng=jax.random.key_data(jax.random.key(seed)))


def state_shardings(model: nnx.Module, tx: optax.GradientTransformation, mesh: Mesh,
                    ema: bool = True) -> TrainState:
  """Shardings of every TrainState leaf: parameters (and their optimizer moments and EMA)
  by the logical-axis rules, everything else replicated."""
  _, params, _ = split_model(model)
  param_shardings, rest_shardings = model_shardings(model, mesh)
  abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                 nnx.to_pure_dict(params))
  opt_shapes = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = _match_params(opt_shapes, abstract_params, param_shardings,
                                sharding.replicated(mesh))
  return TrainState(step=sharding.replicated(mesh), params=param_shardings,
                    rest=rest_shardings, opt_state=opt_shardings,
                    ema=param_shardings if ema else {}, rng=sharding.replicated(mesh))


def _match_params(tree, abstract_params, param_shardings, default):
  """Optimizer-state subtrees that mirror the parameter tree (Adam moments) take the
  parameters' shardings; every other leaf (counts, empty states) is replicated."""
  params_struct = jax.tree.structure(abstract_params)
  mirrors = lambda node: jax.tree.structure(node) == params_struct
  return jax.tree.map(lambda node: param_shardings if mirrors(node) else default, tree,
                      is_leaf=mirrors)


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
  """The key of step ``step``'s Mixup/CutMix draws (``deit_jax.data.mixup.draw``)."""
  return jax.random.fold_in(jax.random.wrap_key_data(rng), step)


def make_train_step(model_def: ModelDef, tx: optax.GradientTransformation, schedule: Callable,
                    loss_config: LossConfig, mixup_config: mixup.MixupConfig | None,
                    *, ema_decay: float = 0.99996, grad_accum_steps: int = 1,
                    teacher_def: ModelDef | None = None) -> Callable:
  """The pure step ``(state, batch[, teacher]) -> (state, metrics)``; ``batch`` holds
  "image", "label" and, for distillation with precomputed logits, "teacher_logits".

  With ``teacher_def`` (online teacher, as in the official code) the step takes the
  teacher's ``(params, rest)`` as a third argument and runs it in eval mode on the same
  augmented, mixed images; it receives no gradient.
  """

  def forward_loss(params, rest, images, targets, teacher):
    model = model_def.merge(params, rest)
    model.train()

    def loss_fn(m):
      outputs = m(images)
      terms = losses.deit_loss_terms(
          outputs, targets, teacher, distillation=loss_config.distillation,
          alpha=loss_config.alpha, tau=loss_config.tau, kl_reduction=loss_config.kl_reduction,
          label_smoothing=loss_config.label_smoothing,
          hard_smoothing=loss_config.hard_smoothing)
      return terms.total, (terms, outputs)

    (loss, (terms, outputs)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    _, _, new_rest = split_model(model)
    return loss, terms, outputs, nnx.to_pure_dict(grads), nnx.to_pure_dict(new_rest)

  def step_fn(state: TrainState, batch: dict[str, jax.Array], teacher_state=None):
    key = step_key(state.rng, state.step)
    images, labels = batch["image"], batch["label"]
    teacher = batch.get("teacher_logits")
    if mixup_config is not None and mixup_config.enabled:
      images, targets, teacher = mixup.mixup_batch(key, images, labels,
                                                   loss_config.num_classes, mixup_config,
                                                   teacher)
    else:
      targets = labels
    if teacher_def is not None:
      teacher_model = teacher_def.merge(*teacher_state)
      teacher_model.eval()
      teacher = jax.lax.stop_gradient(teacher_model(images).astype(jnp.float32))

    if grad_accum_steps == 1:
      loss, terms, outputs, grads, rest = forward_loss(state.params, state.rest, images,
                                                       targets, teacher)
    else:
      loss, terms, outputs, grads, rest = _accumulate(forward_loss, state, images, targets,
                                                      teacher, grad_accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = (optax.incremental_update(params, state.ema, 1.0 - ema_decay) if state.ema
           else state.ema)
    cls_logits = outputs[0] if isinstance(outputs, tuple) else outputs
    hard_targets = targets if targets.ndim == 1 else jnp.argmax(targets, -1)
    metrics = {
        "train_loss": loss, "loss_base": terms.base, "loss_distill": terms.distill,
        "train_accuracy": jnp.mean(jnp.argmax(cls_logits, -1) == hard_targets),
        "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
    }
    new_state = TrainState(state.step + 1, params, rest, opt_state, ema, state.rng)
    return new_state, metrics

  return step_fn


def _accumulate(forward_loss, state, images, targets, teacher, steps):
  """Mean loss/gradients over ``steps`` micro-batches (lax.scan keeps one in memory)."""
  b = images.shape[0]
  if b % steps:
    raise ConfigError(f"batch {b} is not divisible by grad_accum_steps {steps}")

  def micro(x):
    return None if x is None else x.reshape((steps, b // steps) + x.shape[1:])

  def body(carry, xs):
    rest, grad_sum, loss_sum, base_sum, distill_sum = carry
    mi, mt, mteacher = xs
    loss, terms, outputs, grads, rest = forward_loss(state.params, rest, mi, mt, mteacher)
    grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
    return (rest, grad_sum, loss_sum + loss, base_sum + terms.base,
            distill_sum + terms.distill), outputs

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  init = (state.rest, zeros, 0.0, 0.0, 0.0)
  (rest, grad_sum, loss_sum, base_sum, distill_sum), outputs = jax.lax.scan(
      body, init, (micro(images), micro(targets), micro(teacher)))
  grads = jax.tree.map(lambda g: g / steps, grad_sum)
  merge = lambda o: o.reshape((b,) + o.shape[2:])
  outputs = tuple(merge(o) for o in outputs) if isinstance(outputs, tuple) else merge(outputs)
  terms = losses.DeiTLossTerms(loss_sum / steps, base_sum / steps, distill_sum / steps)
  return loss_sum / steps, terms, outputs, grads, rest


def jit_train_step(step_fn, state_sharding: TrainState, mesh: Mesh, batch_keys,
                   teacher_sharding=None) -> Callable:
  """jax.jit with explicit in/out shardings and the state donated."""
  batch_sharding = {k: sharding.batch_sharding(mesh) for k in batch_keys}
  metric_sharding = sharding.replicated(mesh)
  in_shardings = (state_sharding, batch_sharding)
  if teacher_sharding is not None:
    in_shardings += (teacher_sharding,)
  return jax.jit(sharding.on_mesh(step_fn, mesh), in_shardings=in_shardings,
                 out_shardings=(state_sharding, metric_sharding), donate_argnums=(0,))
