"""Where a run's teacher targets come from (config ``distill``), behind one interface:

* ``Teacher``: none (``distill.type=none``); the device batch is the image and label;
* ``PrecomputedTeacher``: ``distill.teacher_logits=DIR``, logits of a store
  (``deit_jax.teacher.store``) joined on the host to every batch by example id (and
  stored view, for crop-consistent logits);
* ``OnlineTeacher``: ``distill.teacher=PATH`` (a training workdir, orbax step or model
  directory) run inside the train step on the same augmented, mixed batch, in eval mode,
  without gradient, in ``distill.teacher_dtype`` -- the official DeiT behaviour.

What the trainer uses of one: ``views`` (stored crop views the train pipeline replays),
``join(batch)`` (host batch -> the device batch, whose keys are ``batch_keys``), and
``model_def``, ``sharding`` and ``step_args`` (the online teacher's graph, the shardings
of its weights and the weights, an extra argument of the train step).
``deit_jax.config_glue.make_teacher`` builds the one a config asks for, checking
everything before the first step; evaluation (``config_glue.eval_teacher``) joins teacher
logits of the eval split for student/teacher agreement the same way.

Free of TensorFlow: the benchmark uses ``Teacher`` for its batch of given logits.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from deit_jax import train_step as ts

TRAIN_KEYS = ("image", "label")
EVAL_KEYS = ("image", "label", "mask")


class Teacher:
  """No teacher: the device batch is the host batch's ``keys``."""

  views: np.ndarray | None = None
  model_def: ts.ModelDef | None = None
  sharding = None
  step_args: tuple = ()

  def __init__(self, keys: tuple[str, ...] = TRAIN_KEYS):
    self.keys = tuple(keys)

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return self.keys

  def join(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: batch[k] for k in self.keys}


class PrecomputedTeacher(Teacher):
  """Logits of a store, joined by example id (and view) to every host batch."""

  def __init__(self, store, keys: tuple[str, ...] = TRAIN_KEYS):
    super().__init__(keys)
    self.store = store
    self.views = store.views

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return self.keys + ("teacher_logits",)

  def join(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = super().join(batch)
    out["teacher_logits"] = self.store.lookup(
        batch["id"], batch["view"] if self.store.num_views else None)
    return out


class OnlineTeacher(Teacher):
  """A model run inside the train step; its weights are the step's third argument."""

  def __init__(self, model: nnx.Module, mesh):
    super().__init__()
    self.model_def = ts.ModelDef.of(model)
    _, params, rest = ts.split_model(model)
    self.sharding = ts.model_shardings(model, mesh)
    self.step_args = (jax.device_put((nnx.to_pure_dict(params), nnx.to_pure_dict(rest)),
                                     self.sharding),)
