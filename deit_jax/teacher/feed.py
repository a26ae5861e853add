"""Where a training run's teacher targets come from (config ``distill``):

* ``distill.teacher_logits=DIR``: precomputed logits (``deit_jax.teacher.store``), joined
  on the host to every batch by example id (and stored view, for crop-consistent logits);
* ``distill.teacher=PATH``: an online teacher (a training workdir, orbax step or model
  directory) run inside the train step on the same augmented, mixed batch, in eval mode,
  without gradient, in ``distill.teacher_dtype`` -- the official DeiT behaviour;
* neither, with ``distill.type=none``.

Everything is checked when the run is set up, before the first step.
"""

from __future__ import annotations

import jax
import numpy as np

from deit_jax.cli import UserError


class TeacherFeed:

  def __init__(self, config, train_source, augment, mesh):
    d = config.distill
    self.store, self.model_def, self.sharding, self.step_args = None, None, None, ()
    logits_path, teacher_path = d.get("teacher_logits", ""), d.get("teacher", "")
    if d.type not in ("none", "soft", "hard"):
      raise UserError(f"distill.type must be none, soft or hard, got {d.type!r}")
    if d.type == "none":
      if logits_path or teacher_path:
        raise UserError("distill.type=none but a teacher is configured; set distill.type "
                        "to soft or hard, or clear distill.teacher_logits/distill.teacher")
      return
    if bool(logits_path) == bool(teacher_path):
      raise UserError(f"distill.type={d.type} needs exactly one of distill.teacher_logits "
                      "(precomputed, python -m deit_jax.teacher precompute) or "
                      "distill.teacher (online: a checkpoint run in the train step)")
    if logits_path:
      self._open_store(logits_path, train_source, augment)
    else:
      self._load_online(teacher_path, config, mesh)

  def _open_store(self, path, train_source, augment):
    from deit_jax import cli
    self.store = cli.open_teacher_logits(path, train_source)
    if self.store.num_views:
      saved = self.store.manifest["transform"]
      keys = ("crop", "pad", "image_size") if augment.crop == "pad_crop" else ("crop",)
      differ = [f"{k}: logits {saved.get(k)!r} vs run {getattr(augment, k)!r}" for k in keys
                if saved.get(k) != getattr(augment, k)]
      if differ:
        raise UserError(f"crop-consistent teacher logits {path} were drawn with another "
                        f"crop geometry ({'; '.join(differ)})")

  def _load_online(self, path, config, mesh):
    from deit_jax import checkpoint, train_step as ts
    model, info = checkpoint.load_trained_model(
        path, dtype=config.distill.get("teacher_dtype", "bfloat16"))
    classes = getattr(model.config, "num_classes", None)
    if classes != config.num_classes:
      raise UserError(f"teacher {path} predicts {classes} classes, the run has "
                      f"{config.num_classes}")
    self.model_def = ts.ModelDef.of(model)
    _, params, rest = ts.split_model(model)
    from flax import nnx
    self.sharding = ts.model_shardings(model, mesh)
    self.step_args = (jax.device_put((nnx.to_pure_dict(params), nnx.to_pure_dict(rest)),
                                     self.sharding),)
    self.info = info

  @property
  def views(self) -> np.ndarray | None:
    return None if self.store is None else self.store.views

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return ("image", "label") + (("teacher_logits",) if self.store is not None else ())

  def join(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The device batch: image and label, plus the teacher logits of these examples."""
    out = {"image": batch["image"], "label": batch["label"]}
    if self.store is not None:
      out["teacher_logits"] = self.store.lookup(
          batch["id"], batch["view"] if self.store.num_views else None)
    return out
