"""Precomputed teacher logits on disk, and their join to training examples by id.

A store is a directory (local or gs://)::

    manifest.json                       what the logits are of; written last
    logits-<first id>-<end id>.npz      one shard per contiguous id range

An example's id is its index in the split (``deit_jax.data.sources``), so a shard of ids
[a, b) holds rows for exactly those examples. Each shard holds ``ids`` and either

* ``storage="full"``: ``logits`` float16 [n, (K,) C], or
* ``storage="topk"``: the k largest logits ``values`` float16 [n, (K,) k] with their class
  ``indices`` [n, (K,) k], plus ``fill`` float16 [n, (K,)]: log of the mean of exp(logit)
  over the C - k classes left out. Rebuilt dense logits put ``fill`` in every missing
  class, which keeps the teacher's probability mass outside its top k exact at T = 1
  (truncating to -inf would instead renormalise it onto the top k); argmax, and with it
  hard distillation, is exact for any k >= 1.

With crop-consistent views (``K`` views per image) shards also hold ``views`` int32
[n, K, 5] (crop window + flip, ``deit_jax.data.pipeline``); the train pipeline replays
one of them per visit and the host joins the logits of exactly that view.

Shards are written to a temporary name and renamed, so an interrupted precompute leaves
only complete shards (and re-running it skips them); the manifest comes last.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from deit_jax import files
from deit_jax.errors import TeacherLogitsError, class_mismatch

MANIFEST = "manifest.json"
FORMAT = 1


def shard_name(first: int, end: int) -> str:
  return f"logits-{first:010d}-{end:010d}.npz"


def compress(logits: np.ndarray, storage: str, k: int) -> dict[str, np.ndarray]:
  """float32 logits [..., C] -> the arrays a shard stores for them."""
  logits = np.asarray(logits, np.float32)
  if storage == "full":
    return {"logits": logits.astype(np.float16)}
  if storage != "topk":
    raise ValueError(f"storage must be 'full' or 'topk', got {storage!r}")
  num_classes = logits.shape[-1]
  k = min(k, num_classes)
  indices = np.argsort(-logits, axis=-1, kind="stable")[..., :k]
  values = np.take_along_axis(logits, indices, -1)
  rest = logits.copy()
  np.put_along_axis(rest, indices, -np.inf, -1)
  if k < num_classes:
    peak = np.max(rest, axis=-1, keepdims=True)
    fill = (peak[..., 0] + np.log(np.sum(np.exp(rest - peak), -1) / (num_classes - k)))
  else:
    fill = np.full(logits.shape[:-1], -np.inf, np.float32)
  index_dtype = np.uint16 if num_classes <= 65536 else np.int32
  return {"indices": indices.astype(index_dtype), "values": values.astype(np.float16),
          "fill": fill.astype(np.float16)}


def write_shard(out_dir: str, ids: np.ndarray, arrays: dict[str, np.ndarray]) -> str:
  """Writes one shard atomically (temporary file, then rename)."""
  ids = np.asarray(ids, np.int64)
  name = shard_name(int(ids[0]), int(ids[-1]) + 1)
  buffer = io.BytesIO()
  np.savez(buffer, ids=ids, **arrays)
  files.write_bytes(files.join(out_dir, name), buffer.getvalue())
  return name


def write_manifest(out_dir: str, manifest: dict[str, Any]) -> None:
  files.write_text(files.join(out_dir, MANIFEST),
                   json.dumps({"format": FORMAT, **manifest}, indent=2, sort_keys=True))


def read_manifest(path: str) -> dict[str, Any]:
  file = files.join(path, MANIFEST)
  if not files.exists(file):
    raise TeacherLogitsError(f"{path}: no {MANIFEST} (not teacher logits, or their "
                             "precompute has not finished; re-run it to complete)")
  return json.loads(files.read_text(file))


class TeacherLogits:
  """A whole store held in host memory, joined to batches by example id.

  Memory: full ImageNet-1k logits are 2.6 GB (fp16) per host, top-10 about 50 MB.
  """

  def __init__(self, path: str):
    self.path = path
    self.manifest = read_manifest(path)
    m = self.manifest
    self.num_examples, self.num_classes = int(m["num_examples"]), int(m["num_classes"])
    self.storage, self.num_views = m["storage"], int(m.get("views", 0))
    rows = (self.num_examples, self.num_views) if self.num_views else (self.num_examples,)
    self.present = np.zeros(self.num_examples, bool)
    self._arrays: dict[str, np.ndarray] = {}
    for name in m["shards"]:
      shard = dict(np.load(io.BytesIO(files.read_bytes(files.join(path, name)))))
      ids = shard.pop("ids")
      if ids.size and (ids.min() < 0 or ids.max() >= self.num_examples):
        raise TeacherLogitsError(f"{path}/{name}: ids outside [0, {self.num_examples})")
      for key, value in shard.items():
        if key not in self._arrays:
          fill = -1 if key == "views" else 0
          self._arrays[key] = np.full(rows + value.shape[len(rows):], fill, value.dtype)
        self._arrays[key][ids] = value
      self.present[ids] = True

  @property
  def missing(self) -> int:
    return int(self.num_examples - self.present.sum())

  @property
  def views(self) -> np.ndarray | None:
    """int32 [num_examples, K, 5] crop-consistent views, or None."""
    return self._arrays.get("views")

  def validate(self, *, dataset: str, split: str, num_examples: int, num_classes: int,
               class_names=()) -> None:
    """Raises TeacherLogitsError unless these logits cover this dataset split completely,
    with the classes in the order they were made with (when the manifest records them)."""
    m = self.manifest
    problems = [f"{what}: logits {have!r} vs run {want!r}" for what, have, want in (
        ("dataset", m["dataset"], dataset), ("split", m["split"], split),
        ("num_examples", self.num_examples, num_examples),
        ("num_classes", self.num_classes, num_classes)) if have != want]
    classes = class_mismatch(m.get("class_names"), class_names, "the logits")
    if classes:
      problems.append(classes)
    if problems:
      raise TeacherLogitsError(f"teacher logits {self.path} do not match this run: "
                               + "; ".join(problems))
    if self.missing:
      raise TeacherLogitsError(
          f"teacher logits {self.path} miss {self.missing} of {self.num_examples} examples "
          f"(first missing id {int(np.argmin(self.present))}); re-run the precompute to "
          "complete them")

  def lookup(self, ids: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
    """Dense float32 logits [B, C] of examples ``ids`` (and, with views, view ``views``)."""
    ids = np.asarray(ids, np.int64)
    index = (ids,) if not self.num_views else (ids, np.asarray(views, np.int64))
    if self.num_views and np.any(index[1] < 0):
      raise TeacherLogitsError("these teacher logits are per view: the pipeline must "
                               "replay the stored views (views=store.views)")
    if self.storage == "full":
      return self._arrays["logits"][index].astype(np.float32)
    dense = np.repeat(self._arrays["fill"][index].astype(np.float32)[:, None],
                      self.num_classes, axis=1)
    np.put_along_axis(dense, self._arrays["indices"][index].astype(np.int64),
                      self._arrays["values"][index].astype(np.float32), 1)
    return dense

  def bytes_per_example(self) -> float:
    return sum(a.nbytes for a in self._arrays.values()) / max(self.num_examples, 1)
