"""ImageNet-ReaL: the reassessed labels of the ImageNet validation images (Beyer et al.
2020, "Are we done with ImageNet?", github.com/google-research/reassessed-imagenet), joined
to evaluation batches as a multi-hot row ``real_label`` that ``deit_jax.eval_step`` scores
(a prediction in the set counts as correct; an image whose set is empty is left out).

The sets come from whichever the user has:

* the published ``real.json``: a list of 50,000 lists of class indices, entry i for the
  validation image ``ILSVRC2012_val_{i+1:08d}.JPEG``. Each example is matched by its file
  name, which the source carries with it through the eval stream (TFDS ``imagenet2012``
  records hold it; in an image folder it is the file's name) -- never by its position, so
  the join holds whatever the order of the prepared split and however the stream is
  sharded and padded over processes;
* the TFDS ``imagenet2012_real`` dataset, whose records hold the set (``real_label``) next
  to the image and its original ImageNet label.

The class indices are ImageNet-1k's (sorted WordNet ids), as TFDS ``imagenet2012`` and an
image folder of WordNet-id folders number them.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from deit_jax import files
from deit_jax.errors import UserError

REAL_DATASET = "imagenet2012_real"  # the TFDS dataset that carries the sets itself
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.jpe?g$", re.IGNORECASE)


def val_number(file_name) -> int | None:
  """1-based number of an ImageNet validation file name (any directory), else None."""
  if isinstance(file_name, bytes):
    file_name = file_name.decode("utf-8", "replace")
  match = _VAL_NAME.search(os.path.basename(str(file_name)))
  return int(match.group(1)) if match else None


def is_real_dataset(dataset: str) -> bool:
  return dataset.split("/")[0].split(":")[0] == REAL_DATASET


def source_extras(dataset: str, real_json: str | None) -> tuple[str, ...]:
  """What the eval source must carry for ReaL: file names to look up in ``real_json``, the
  sets themselves (``imagenet2012_real``), or nothing (no ReaL)."""
  if real_json:
    return ("file_name",)
  return ("real_label",) if is_real_dataset(dataset) else ()


class RealJson:
  """The label sets of ``real.json``, looked up by validation file name."""

  def __init__(self, path: str, num_classes: int):
    try:
      sets = json.loads(files.read_text(path))
    except json.JSONDecodeError as e:
      raise UserError(f"{path} is not JSON ({e}); ReaL labels come as real.json from "
                      "github.com/google-research/reassessed-imagenet") from None
    if not isinstance(sets, list) or not all(
        isinstance(s, list) and all(isinstance(c, int) for c in s) for s in sets):
      raise UserError(f"{path}: expected a list of lists of class indices (real.json of "
                      "github.com/google-research/reassessed-imagenet)")
    largest = max((c for s in sets for c in s), default=-1)
    if largest >= num_classes or any(c < 0 for s in sets for c in s):
      raise UserError(f"{path} holds class {largest} but the model predicts {num_classes} "
                      "classes (ReaL labels are ImageNet-1k class indices)")
    self.path, self.sets, self.num_classes = path, sets, num_classes

  def rows(self, file_names) -> np.ndarray:
    """uint8 [n, num_classes]: the multi-hot set of each named validation image."""
    out = np.zeros((len(file_names), self.num_classes), np.uint8)
    for i, name in enumerate(file_names):
      number = val_number(name)
      if number is None or number > len(self.sets):
        shown = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        raise UserError(
            f"{shown!r} has no entry in {self.path} ({len(self.sets)} entries, one per "
            "ImageNet validation image ILSVRC2012_val_00000001.JPEG ...): ReaL labels score "
            "the ImageNet validation split only")
      out[i, self.sets[number - 1]] = 1
    return out


class RealJoin:
  """Wraps an evaluation teacher (``deit_jax.teacher.feed``): its device batch plus
  ``real_label`` -- from ``real_json`` by the batch's file names, or passed on as the
  source gave it (``imagenet2012_real``)."""

  def __init__(self, inner, real_json: RealJson | None = None):
    self.inner, self.real_json = inner, real_json

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return self.inner.batch_keys + ("real_label",)

  def join(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = self.inner.join(batch)
    out["real_label"] = (self.real_json.rows(batch["file_name"]) if self.real_json
                         else np.asarray(batch["real_label"], np.uint8))
    return out


def wrap(teacher, source, real_json_path: str | None):
  """``teacher`` joined with ReaL label sets when ``source`` or ``real_json_path`` has
  them (``source_extras`` opened it so), else ``teacher`` itself."""
  if real_json_path:
    return RealJoin(teacher, RealJson(real_json_path, source.num_classes))
  if "real_label" in source.extras:
    return RealJoin(teacher)
  return teacher
