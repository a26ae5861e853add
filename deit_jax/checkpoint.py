"""Model checkpoints: orbax-saved parameters plus the registry name that rebuilds them.

A model directory (written by ``python -m deit_jax.convert`` and restorable by evaluation
and fine-tuning) holds::

    params/                orbax PyTree checkpoint of the model's nnx.Param state
    deit_jax_model.json    {"name": ..., "overrides": {...}, "source": ..., "format": 1}

orbax writes ``params/`` atomically (temporary folder, then rename) and the JSON file is
written last, so a directory without it is an interrupted save and is refused on load.
Local paths and ``gs://`` both work (etils.epath).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from deit_jax.models import create_model

MODEL_METADATA = "deit_jax_model.json"
_FORMAT = 1


def count_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _as_path(directory) -> epath.Path:
  path = epath.Path(directory)
  return path if str(path).startswith("gs://") else path.absolute()


def save_model(directory, model: nnx.Module, *, name: str, overrides: dict[str, Any],
               source: str | None = None, overwrite: bool = False) -> epath.Path:
  """Saves ``model``'s parameters so that ``load_model(directory)`` rebuilds it."""
  path = _as_path(directory)
  if path.exists() and any(path.iterdir()):
    if not overwrite:
      raise FileExistsError(f"{path} already exists and is not empty (pass --overwrite to "
                            "replace it)")
    path.rmtree()
  path.mkdir(parents=True, exist_ok=True)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path / "params", params)
    checkpointer.wait_until_finished()
  metadata = {"format": _FORMAT, "name": name, "overrides": dict(overrides),
              "source": source, "num_params": count_params(model)}
  tmp = path / (MODEL_METADATA + ".tmp")
  tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True))
  tmp.rename(path / MODEL_METADATA)
  return path


def read_metadata(directory) -> dict[str, Any]:
  path = _as_path(directory)
  meta_file = path / MODEL_METADATA
  if not meta_file.exists():
    what = "an incomplete save" if (path / "params").exists() else "not a deit_jax model directory"
    raise FileNotFoundError(f"{path}: {what} (no {MODEL_METADATA})")
  return json.loads(meta_file.read_text())


def load_model(directory, **overrides: Any) -> nnx.Module:
  """Rebuilds the saved model; ``overrides`` may change numerics (dtype, remat, drop rates).

  Architecture overrides that change a parameter's shape fail with a clear error.
  """
  path = _as_path(directory)
  metadata = read_metadata(path)
  config = {**metadata["overrides"], **overrides}
  model = create_model(metadata["name"], **config)
  state = nnx.state(model, nnx.Param)
  target = nnx.to_pure_dict(state)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      restored = checkpointer.restore(path / "params", abstract)
    except ValueError as e:
      raise ValueError(f"{path}: saved parameters do not fit {metadata['name']} with "
                       f"overrides {config}: {e}") from e
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  return model
