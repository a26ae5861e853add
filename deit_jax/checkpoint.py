"""Model checkpoints: orbax-saved parameters plus the registry name that rebuilds them.

A model directory (written by ``python -m deit_jax.convert`` and restorable by evaluation
and fine-tuning) holds::

    params/                orbax PyTree checkpoint of the model's nnx.Param state
    batch_stats/           the same for its BatchNorm statistics (convnets only)
    deit_jax_model.json    {"name": ..., "overrides": {...}, "source": ..., "format": 1}

The JSON file is written last (after orbax has finalized ``params/``), so a directory
without it is an interrupted save and is refused on load. Every path goes through
``deit_jax.files``: local ones and ``gs://`` alike.
"""

from __future__ import annotations

import hashlib
import json
import signal
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from deit_jax import files
from deit_jax.errors import (CheckpointError, CheckpointMismatchError, NotACheckpointError,
                             OutputExistsError, class_mismatch)
from deit_jax.models.registry import create_model

MODEL_METADATA = "deit_jax_model.json"
_FORMAT = 1


def count_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _as_path(directory) -> epath.Path:
  return files.orbax_path(directory)


def save_model(directory, model: nnx.Module, *, name: str, overrides: dict[str, Any],
               source: str | None = None, overwrite: bool = False,
               class_names: list[str] | None = None) -> epath.Path:
  """Saves ``model``'s parameters so that ``load_model(directory)`` rebuilds it;
  ``class_names`` (what its labels mean, when known) are recorded beside them."""
  path = _as_path(directory)
  if files.isdir(path) and files.listdir(path):
    if not overwrite:
      raise OutputExistsError(f"{path} already exists and is not empty (pass --overwrite to "
                            "replace it)")
    files.rmtree(path)
  files.makedirs(path)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path / "params", params)
    if batch_stats:
      checkpointer.save(path / "batch_stats", batch_stats)
    checkpointer.wait_until_finished()
  metadata = {"format": _FORMAT, "name": name, "overrides": dict(overrides),
              "source": source, "num_params": count_params(model),
              "batch_stats": bool(batch_stats)}
  if class_names:
    metadata["class_names"] = [str(n) for n in class_names]
  files.write_text(path / MODEL_METADATA, json.dumps(metadata, indent=2, sort_keys=True))
  return path


def read_metadata(directory) -> dict[str, Any]:
  path = files.absolute(directory)
  meta_file = files.join(path, MODEL_METADATA)
  if not files.exists(meta_file):
    what = ("an incomplete save" if files.exists(files.join(path, "params"))
            else "not a deit_jax model directory")
    raise NotACheckpointError(f"{path}: {what} (no {MODEL_METADATA})")
  return json.loads(files.read_text(meta_file))


def load_model(directory, **overrides: Any) -> nnx.Module:
  """Rebuilds the saved model; ``overrides`` may change numerics (dtype, remat, drop rates).

  Architecture overrides that change a parameter's shape fail with a clear error.
  """
  path = _as_path(directory)
  metadata = read_metadata(path)
  config = {**metadata["overrides"], **overrides}
  model = create_model(metadata["name"], **config)
  items = [("params", nnx.state(model, nnx.Param))]
  if jax.tree.leaves(nnx.state(model, nnx.BatchStat)):
    if not metadata.get("batch_stats"):
      raise CheckpointError(f"{path}: saved without the BatchNorm statistics "
                            f"{metadata['name']} needs (an older deit_jax wrote it); convert "
                            "or export it again")
    items.append(("batch_stats", nnx.state(model, nnx.BatchStat)))
  with ocp.StandardCheckpointer() as checkpointer:
    for item, state in items:
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
      try:
        restored = checkpointer.restore(path / item, abstract)
      except ValueError as e:
        raise CheckpointError(f"{path}: saved {item} do not fit {metadata['name']} with "
                              f"overrides {config}: {e}") from e
      nnx.replace_by_pure_dict(state, restored)
      nnx.update(model, state)
  return model


# ---------------------------------------------------------------------------
# Training checkpoints: <workdir>/checkpoints/<step>/{state, data, meta}
# ---------------------------------------------------------------------------

def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
  # Typed PRNG keys are stored as their raw uint32 data.
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


class _Manager(ocp.CheckpointManager):
  """orbax's CheckpointManager without its own queries of JAX's preemption sync point.

  orbax asks ``reached_preemption_sync_point`` from ``save`` and, on process 0, from the
  thread that finalizes an asynchronous save, with that save's (by then older) step. JAX
  keeps only the last value asked and reports it to the other processes when a notice
  arrives, so such a late call could make process 0 report a step it has passed, and the
  processes would not all stop at the agreed step. ``TrainCheckpoints.reached_preemption``
  is the only caller instead (orbax uses the answer for its logs and ``should_save`` only).
  """

  def reached_preemption(self, step: int) -> bool:
    return False


class TrainCheckpoints:
  """orbax CheckpointManager for the train state, the data-iterator position and a
  description of the run, saved asynchronously every ``every_steps`` and kept ``keep``.

  orbax finishes a step atomically: on a local disk it renames a temporary folder, on
  gs:// it writes a commit file into the step (``committed_steps`` below), so ``latest_step``
  only ever sees complete checkpoints and an interrupted save leaves nothing that a resume
  would pick. Errors of a background save are raised at the latest by the
  next ``save`` or by ``close``.
  """

  def __init__(self, workdir, *, every_steps: int, keep: int):
    self.directory = _as_path(workdir) / "checkpoints"
    self.every_steps = every_steps
    self._reached = lambda step: False  # until watch_preemption
    self._manager = _Manager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True, create=True,
            cleanup_tmp_directories=True),
        item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def watch_preemption(self, start_step: int) -> str | None:
    """From now on a SIGTERM to any one process makes ``reached_preemption`` true at one
    step, the same on every process. Returns a warning when SIGTERM cannot be handled.

    One process: a Python handler sets a flag. Several (``jax.distributed``): JAX's
    preemption service, which ``jax.distributed.initialize`` starts, catches SIGTERM in
    each process (a C++ handler, which a Python one would replace), posts the notice to the
    coordination service, and all processes agree on the step to stop at: one past the
    furthest any of them has reported to ``reached_preemption_sync_point``. Steps are
    counted from ``start_step`` (the same on every process), so a notice that arrives
    before the first step names the first one.
    """
    if not jax.distributed.is_initialized():
      notices = []
      signal.signal(signal.SIGTERM, lambda *_: notices.append(True))
      self._reached = lambda step: bool(notices)
      return None
    try:
      multihost_utils.reached_preemption_sync_point(0)
    except RuntimeError:  # the service was turned off: no handler, SIGTERM ends the process
      return ("JAX's preemption service is off (jax_enable_preemption_service): a SIGTERM "
              "ends the processes without saving a checkpoint")
    self._reached = lambda step: multihost_utils.reached_preemption_sync_point(
        step - start_step)
    return None

  def reached_preemption(self, step: int) -> bool:
    """True at the step where every process saves and stops after a SIGTERM; call once per
    step, for consecutive steps, on every process. No host synchronization: a local
    flag or a lock-protected comparison (JAX agrees on the step in a background thread)."""
    return self._reached(step)

  def save(self, step: int, state, data_state: dict, meta: dict, *, force=False) -> bool:
    self.wait()  # surfaces an earlier background failure here
    saved = self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_keys_to_data(state)),
        data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)), force=force)
    return saved

  def check_compatible(self, step: int, meta: dict) -> None:
    saved = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    saved = saved["meta"]
    differences = [f"{k}: checkpoint {saved.get(k)!r} vs config {meta[k]!r}"
                   for k in ("model", "model_config", "num_classes")
                   if saved.get(k) != meta.get(k)]
    classes = class_mismatch(saved.get("class_names"), meta.get("class_names"),
                             "the checkpoint")
    if classes:  # recorded since issue 35; older checkpoints lack them
      differences.append(classes)
    if saved.get("steps_per_epoch") and saved["steps_per_epoch"] != meta.get("steps_per_epoch"):
      differences.append(f"steps per epoch: checkpoint {saved['steps_per_epoch']} vs run "
                         f"{meta.get('steps_per_epoch')} (another batch, split or epoch rule)")
    if "ema" in saved and saved["ema"] != meta.get("ema"):  # older checkpoints lack "ema"
      differences.append(f"EMA weights: checkpoint {'with' if saved['ema'] else 'without'}, "
                         f"config.ema_decay={'0' if not meta.get('ema') else '> 0'}")
    if differences:
      raise CheckpointMismatchError(
          f"{self.directory} holds a checkpoint of another run ({'; '.join(differences)}); "
          "use another --workdir or the matching config (the checkpoint was left untouched)")

  def restore(self, step: int, abstract_state):
    """State with the shardings of ``abstract_state`` (ShapeDtypeStructs), plus data state."""
    def as_stored(x):  # keys were saved as their uint32 data
      if not _is_key(x):
        return x
      shape = jax.eval_shape(jax.random.key_data, x).shape
      return jax.ShapeDtypeStruct(shape, np.uint32, sharding=x.sharding)

    target = jax.tree.map(as_stored, abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    state = jax.tree.map(
        lambda template, value: jax.random.wrap_key_data(value) if _is_key(template) else value,
        abstract_state, restored["state"])
    return state, restored["data"]

  def wait(self) -> None:
    """Until the last save is written (orbax saves in the background)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()


EVAL_KEYS = ("top1", "top5", "top1_cls", "top1_dist", "loss")


def best_metrics(ema: bool) -> tuple[str, ...]:
  """Metric names ``best_metric`` may take (the EMA ones when the run keeps an EMA)."""
  return tuple(f"eval_{p}{k}" for p in ("", "ema_")[:1 + ema] for k in EVAL_KEYS)


class BestCheckpoint:
  """<workdir>/best/<step>/{state, meta}: the weights with the best ``metric`` so far
  (highest accuracy, lowest loss), the EMA weights for an ``eval_ema_*`` metric.

  A directory of its own, apart from the training checkpoints, so their keep policy and
  exact resume are untouched. orbax writes a new best completely before it removes the
  previous one (max_to_keep=1), so a best checkpoint exists at every moment once one was
  saved. The layout is a training step's (state["params"], state["rest"], meta), so
  evaluation, export and ``init_from`` read it like any checkpoint.
  """

  def __init__(self, workdir, metric: str):
    self.metric = metric
    self.directory = _as_path(workdir) / "best"
    self._manager = _Manager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                             enable_async_checkpointing=True,
                                             cleanup_tmp_directories=True),
        item_names=("state", "meta"))
    self.value, latest = None, self._manager.latest_step()
    if latest is not None:  # a resumed run keeps competing with its earlier best
      saved = self._manager.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      if saved["meta"].get("best_metric") == metric:
        self.value = saved["meta"]["value"]

  def _better(self, value: float) -> bool:
    if self.value is None:
      return True
    return value < self.value if self.metric.endswith("loss") else value > self.value

  def update(self, step: int, eval_metrics: dict, state, meta: dict) -> bool:
    """Saves ``state``'s weights if ``eval_metrics[metric]`` beats the best so far."""
    value = float(eval_metrics[self.metric])
    if not self._better(value):
      return False
    ema = self.metric.startswith("eval_ema_")
    self._manager.wait_until_finished()
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_keys_to_data(
            {"params": state.ema if ema else state.params, "rest": state.rest})),
        meta=ocp.args.JsonSave({**meta, "best_metric": self.metric, "value": value,
                                "step": step, "weights": "ema" if ema else "raw"})),
        force=True)
    self.value = value
    return True

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def best_directory(workdir) -> str:
  """The best checkpoint of a training workdir; NotACheckpointError if it kept none."""
  path = files.join(files.absolute(workdir), "best")
  if _train_checkpoint_step(path) is None:
    raise NotACheckpointError(f"{files.absolute(workdir)} holds no best checkpoint (train with "
                              "--config.best_metric=eval_top1 or eval_ema_top1 to keep one)")
  return path


# ---------------------------------------------------------------------------
# Any saved model, for evaluation, teachers and fine-tuning
# ---------------------------------------------------------------------------

COMMIT_FILE = ocp.path.atomicity.COMMIT_SUCCESS_FILE  # "commit_success.txt"
_TMP_SUFFIX = ocp.path.atomicity.TMP_DIR_SUFFIX       # ".orbax-checkpoint-tmp"


def _commit_file_required(step_dir: str) -> bool:
  """Whether only orbax's commit file tells that ``step_dir`` is complete.

  orbax's own rule (``orbax.checkpoint.path.step.is_path_finalized``): on ``gs://`` it
  writes a step in place and finishes it by writing ``commit_success.txt`` into it
  (``CommitFileTemporaryPath``, its default there), so a step directory without that file
  is still being written or was interrupted; elsewhere it writes
  ``<step>.orbax-checkpoint-tmp-<time>`` and renames it to ``<step>`` when complete
  (``AtomicRenameTemporaryPath``), so the name tells. Every ``scheme://`` filesystem is
  read the ``gs://`` way."""
  return not files.is_local(step_dir)


def _committed(step_dir: str) -> bool:
  return files.isdir(files.join(step_dir, "state")) and (
      not _commit_file_required(step_dir) or files.exists(files.join(step_dir, COMMIT_FILE)))


def committed_steps(directory) -> list[int]:
  """The training steps in an orbax checkpoint directory (``<workdir>/checkpoints`` or
  ``<workdir>/best``) that orbax has finished writing, ascending. Every reader of
  checkpoints picks its step from these; the trainer's resume uses orbax's own listing,
  which follows the same rule."""
  directory = files.absolute(directory)
  if not files.isdir(directory):
    return []
  return sorted(int(name) for name in files.listdir(directory)
                if name.isdigit() and _committed(files.join(directory, name)))


def _uncommitted(directory: str) -> list[str]:
  if not files.isdir(directory):
    return []
  return [name for name in files.listdir(directory)
          if (name.isdigit() or _TMP_SUFFIX in name)
          and not _committed(files.join(directory, name))
          and files.isdir(files.join(directory, name, "state"))]


def _train_checkpoint_step(path) -> tuple[str, int] | None:
  """(checkpoints dir, step) for a workdir or its checkpoints/ dir (the latest committed
  step) or one committed step dir; None for anything else. A step dir that is not
  committed, or a checkpoints dir with no committed step but some being written, is a
  NotACheckpointError."""
  path = files.absolute(path)
  if files.isdir(files.join(path, "checkpoints")):
    path = files.join(path, "checkpoints")
  name, parent = files.basename(path), files.dirname(path)
  if (name.isdigit() or _TMP_SUFFIX in name) and files.isdir(files.join(path, "state")):
    if name.isdigit() and _committed(path):
      return parent, int(name)
    steps = committed_steps(parent)
    raise NotACheckpointError(
        f"{path}: this checkpoint step is not committed (orbax is still writing it, or its "
        "save was interrupted); " + (f"the latest committed step is {steps[-1]}" if steps
                                     else "no step there is committed yet"))
  steps = committed_steps(path)
  if steps:
    return path, steps[-1]
  pending = _uncommitted(path)
  if pending:
    raise NotACheckpointError(
        f"{path}: no committed checkpoint step yet ({', '.join(pending)} still being written "
        "by orbax, or interrupted)")
  return None


def load_trained_model(path, *, ema: bool = False, **numerics: Any) -> tuple[nnx.Module, dict]:
  """Rebuilds a model from a training workdir (its latest committed checkpoint), one orbax
  step directory, or a model directory written by ``deit_jax.convert`` / ``save_model``.

  ``ema=True`` takes the EMA parameters of a training checkpoint. ``numerics`` override
  settings that do not change parameter shapes (dtype, remat, drop rates). Returns the
  model in eval mode and a description {"name", "overrides", "path", "step", "class_names"}
  (class names as recorded, None for files written before they were).
  """
  path = files.absolute(path)
  if files.exists(files.join(path, MODEL_METADATA)):
    if ema:
      raise CheckpointError(f"{path}: a model directory holds one set of weights (no EMA)")
    metadata = read_metadata(path)
    model = load_model(path, **numerics)
    info = {"name": metadata["name"], "overrides": metadata["overrides"], "step": None,
            "class_names": metadata.get("class_names")}
  else:
    found = _train_checkpoint_step(path)
    if found is None:
      raise NotACheckpointError(f"{path}: neither a training workdir, an orbax checkpoint step "
                              f"nor a deit_jax model directory")
    directory, step = found
    step_dir = files.join(directory, str(step))
    meta = json.loads(files.read_text(files.join(step_dir, "meta", "metadata")))
    overrides = {**meta["model_config"], **numerics}
    model = create_model(meta["model"], **overrides)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    target = {"ema" if ema else "params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(
          files.orbax_path(files.join(step_dir, "state")),
          args=ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                      restore_args=ocp.checkpoint_utils.construct_restore_args(
                                          abstract)))
    if ema and not jax.tree.leaves(restored.get("ema", {})):
      raise CheckpointError(f"{path}: this run kept no EMA (ema_decay was 0)")
    nnx.replace_by_pure_dict(params, restored["ema" if ema else "params"])
    nnx.replace_by_pure_dict(rest, restored["rest"])
    model = nnx.merge(graphdef, params, rest)
    info = {"name": meta["model"], "overrides": meta["model_config"], "step": step,
            "class_names": meta.get("class_names")}
  model.eval()
  info["path"] = str(path)
  return model, info


def params_digest(model: nnx.Module) -> str:
  """SHA-256 over the names, shapes, dtypes and bytes of the parameters and BatchNorm
  statistics: identifies a teacher."""
  digest = hashlib.sha256()
  flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  for key, variable in sorted(flat, key=lambda kv: tuple(map(str, kv[0]))):
    value = np.asarray(variable.get_value() if hasattr(variable, "get_value") else variable.value)
    digest.update("/".join(map(str, key)).encode())
    digest.update(f"{value.shape}{value.dtype}".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()
