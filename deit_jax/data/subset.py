"""Dataset subsets: some of a source's classes, and/or a fixed number of examples per class.

``select(source, classes=..., per_class=..., seed=...)`` returns a new ``Source`` that
the pipeline, the teacher-logit precompute and evaluation use like any other:

* ``classes`` (class names or indices, in the order given) are kept and relabelled
  0..k-1 in that order; empty keeps every class.
* ``per_class`` > 0 keeps that many examples of each kept class, drawn by a permutation
  seeded with ``seed`` -- the same examples on every host and every run; 0 keeps all.
* Example ids are positions in the subset, and the subset's ``name`` spells out the
  selection, so teacher logits precomputed on one subset are refused for another.

Transfer-learning and few-label experiments (e.g. Fashion-MNIST split into two disjoint
class sets, 100 labelled images per class) are configs, not code.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf

from deit_jax.data import pipeline
from deit_jax.data.sources import DatasetError, Source


def parse_classes(spec: str | Sequence) -> tuple[str, ...]:
  """``"0,3,T-shirt/top"`` or a sequence -> a tuple of stripped class tokens."""
  items = spec.split(",") if isinstance(spec, str) else list(spec)
  return tuple(str(c).strip() for c in items if str(c).strip())


def class_indices(source: Source, classes: Sequence[str]) -> list[int]:
  """Indices into ``source``'s classes of ``classes`` (names, or integers as text)."""
  indices = []
  for token in classes:
    if token in source.class_names:
      index = source.class_names.index(token)
    elif token.lstrip("-").isdigit():
      index = int(token)
    else:
      raise DatasetError(f"{source.name} has no class {token!r} (classes: "
                         f"{', '.join(source.class_names) or f'0..{source.num_classes - 1}'})")
    if not 0 <= index < source.num_classes:
      raise DatasetError(f"{source.name} has no class {index} (it has {source.num_classes}: "
                         f"0..{source.num_classes - 1})")
    if index in indices:
      raise DatasetError(f"class {token!r} is listed twice in the subset")
    indices.append(index)
  return indices


def labels_of(source: Source) -> np.ndarray:
  """Every example's label, read from the source when it does not hold them (images are
  not decoded)."""
  if source.labels is not None:
    return source.labels
  ds = pipeline.map_examples(tf.data.Dataset.range(source.num_examples), source,
                             lambda example: example["label"])
  return np.concatenate(list(ds.batch(4096).as_numpy_iterator())).astype(np.int64)


def select(source: Source, *, classes: Sequence[str] = (), per_class: int = 0,
           seed: int = 0) -> Source:
  """The subset of ``source`` described in the module docstring (``source`` itself when
  nothing is selected)."""
  if not classes and per_class <= 0:
    return source
  labels = labels_of(source)
  kept = class_indices(source, classes) if classes else list(range(source.num_classes))
  rng = np.random.default_rng(seed)
  chosen = []
  for old_label in kept:
    members = np.flatnonzero(labels == old_label)
    if per_class > 0:
      if per_class > len(members):
        raise DatasetError(f"subset asks for {per_class} examples per class, but class "
                           f"{_class_name(source, old_label)!r} of {source.name}/"
                           f"{source.split} has {len(members)}")
      members = np.sort(rng.permutation(members)[:per_class])
    chosen.append(members)
  indices = np.sort(np.concatenate(chosen))
  remap = np.full(source.num_classes, -1, np.int64)
  remap[kept] = np.arange(len(kept))
  new_labels = remap[labels[indices]]
  indices_t, new_labels_t = tf.constant(indices, tf.int64), tf.constant(new_labels)
  base_fetch, base_fetch_batch = source.fetch, source.fetch_batch

  def renumbered(example, index):
    example = dict(example)
    example["label"] = tf.gather(new_labels_t, index)
    example["id"] = tf.cast(index, tf.int64)
    return example

  def fetch(index):
    return renumbered(base_fetch(tf.gather(indices_t, index)), index)

  def fetch_batch(indices):  # the same for a vector of indices
    return renumbered(base_fetch_batch(tf.gather(indices_t, indices)), indices)

  spec = []
  if classes:
    spec.append("classes=" + ",".join(str(c) for c in kept))
  if per_class > 0:
    spec.append(f"per_class={per_class},seed={seed}")
  return dataclasses.replace(
      source, name=f"{source.name}[{';'.join(spec)}]", num_examples=len(indices),
      num_classes=len(kept), fetch=fetch, labels=new_labels,
      fetch_batch=fetch_batch if base_fetch_batch is not None else None,
      class_names=tuple(_class_name(source, c) for c in kept) if source.class_names else ())


def _class_name(source: Source, index: int) -> str:
  return source.class_names[index] if source.class_names else str(index)
