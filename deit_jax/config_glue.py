"""Config (an ml_collections ConfigDict from ``configs/``) -> the data side of a run: the
augmentation, the dataset splits, teacher logits and checkpoints, each checked against
the config here, once; and the teacher strategy ``config.distill`` asks for.

The model/optimizer/step side, which must stay free of TensorFlow for the benchmark, is
in ``deit_jax.builder``. Used by the entry points; imports none of them.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from deit_jax import checkpoint, errors
from deit_jax.data import pipeline, sources, subset
from deit_jax.errors import UserError
from deit_jax.teacher.feed import EVAL_KEYS, OnlineTeacher, PrecomputedTeacher, Teacher
from deit_jax.teacher.store import TeacherLogits


def augment_config(config) -> pipeline.AugmentConfig:
  values = config.aug.to_dict()
  values["randaugment"] = values.get("randaugment") or None
  values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
  return pipeline.AugmentConfig(**values)


def open_split(config, split: str, extras: tuple[str, ...] = ()) -> sources.Source:
  """``split`` of the config's dataset, narrowed to ``config.subset``: its classes on every
  split, its ``per_class`` examples on the train split only (evaluation keeps every example
  of the kept classes). In a multi-process job, a dataset that still has to be prepared is
  prepared by process 0 while the others wait (``sources.prepare_once``). ``extras``:
  per-example keys to carry besides image/label/id (``sources.Source.extras``)."""
  if jax.process_count() > 1:
    sources.prepare_once(config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir,
                         first=jax.process_index() == 0, agree=_agree_with_process_0)
  source = sources.open_source(config.dataset, split, data_dir=config.data_dir,
                               manual_dir=config.manual_dir, extras=extras,
                               class_order=config.get("class_order", "auto"))
  chosen = config.subset
  source = subset.select(source, classes=subset.parse_classes(chosen.classes),
                         per_class=chosen.per_class if split == config.train_split else 0,
                         seed=chosen.seed)
  if source.num_classes != config.num_classes:
    raise UserError(f"config.num_classes={config.num_classes} but {source.name} has "
                    f"{source.num_classes} classes")
  return source


def _agree_with_process_0(ok: bool) -> bool:
  """A barrier across all processes that returns process 0's ``ok``."""
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def open_teacher_logits(path: str, source: sources.Source) -> TeacherLogits:
  """The store at ``path``, validated against ``source`` before any compute."""
  logits = TeacherLogits(path)
  logits.validate(dataset=source.name, split=source.split, num_examples=source.num_examples,
                  num_classes=source.num_classes, class_names=source.class_names)
  return logits


def load_model_for(config, path: str, *, role: str = "checkpoint",
                   source: sources.Source | None = None, **kwargs):
  """``checkpoint.load_trained_model(path, **kwargs)``, refused unless it predicts the
  config's ``num_classes`` and, given the ``source`` it will see, was trained on the same
  classes in the same order (``check_classes``). Returns (model, info)."""
  model, info = checkpoint.load_trained_model(path, **kwargs)
  classes = getattr(model.config, "num_classes", None)
  if classes != config.num_classes:
    raise UserError(f"{role} {path} predicts {classes} classes, config.num_classes is "
                    f"{config.num_classes}")
  if source is not None:
    check_classes(info, source, role)
  return model, info


def check_classes(info: dict, source: sources.Source, role: str = "checkpoint") -> None:
  """One line if the checkpoint described by ``info`` recorded other class names (or
  another order) than ``source`` has: its labels would mean other classes."""
  problem = errors.class_mismatch(info.get("class_names"), source.class_names,
                                  f"{role} {info.get('path', '')}".strip())
  if problem:
    raise UserError(f"{problem} ({source.name}/{source.split})")


def make_teacher(config, train_source, augment, mesh) -> Teacher:
  """The teacher strategy ``config.distill`` asks for (``deit_jax.teacher.feed``;
  ``distill.type`` itself is checked by ``builder.check_distillation``)."""
  d = config.distill
  logits_path, teacher_path = d.get("teacher_logits", ""), d.get("teacher", "")
  if d.type == "none":
    if logits_path or teacher_path:
      raise UserError("distill.type=none but a teacher is configured; set distill.type "
                      "to soft or hard, or clear distill.teacher_logits/distill.teacher")
    return Teacher()
  if bool(logits_path) == bool(teacher_path):
    raise UserError(f"distill.type={d.type} needs exactly one of distill.teacher_logits "
                    "(precomputed, python -m deit_jax.teacher precompute) or "
                    "distill.teacher (online: a checkpoint run in the train step)")
  if teacher_path:
    model, _ = load_model_for(config, teacher_path, role="teacher", source=train_source,
                              dtype=d.get("teacher_dtype", "bfloat16"))
    return OnlineTeacher(model, mesh)
  store = open_teacher_logits(logits_path, train_source)
  if store.num_views:
    saved = store.manifest["transform"]
    keys = ("crop", "pad", "image_size") if augment.crop == "pad_crop" else ("crop",)
    differ = [f"{k}: logits {saved.get(k)!r} vs run {getattr(augment, k)!r}" for k in keys
              if saved.get(k) != getattr(augment, k)]
    if differ:
      raise UserError(f"crop-consistent teacher logits {logits_path} were drawn with another "
                      f"crop geometry ({'; '.join(differ)})")
  return PrecomputedTeacher(store)


def eval_teacher(logits_path: str | None, source) -> Teacher:
  """For evaluation: the eval batch (with its mask), plus per-image teacher logits of the
  evaluated split when ``logits_path`` is given (student/teacher agreement)."""
  if not logits_path:
    return Teacher(EVAL_KEYS)
  store = open_teacher_logits(logits_path, source)
  if store.num_views:
    raise UserError(f"{logits_path} holds per-view (crop-consistent) logits; agreement needs "
                    "per-image logits of the eval split")
  return PrecomputedTeacher(store, EVAL_KEYS)


def host_slice(batch_size: int, groups: int = 1) -> pipeline.HostSlice:
  """This process's slice of every global batch (laid out in ``groups``: pipeline)."""
  return pipeline.HostSlice(batch_size, jax.process_index(), jax.process_count(), groups)
