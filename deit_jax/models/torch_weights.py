"""Official DeiT / timm PyTorch weights -> our NNX models (the command line is
``deit_jax.convert``).

Accepts an official DeiT checkpoint (``{"model": state_dict, ...}``), a plain timm
state_dict ``.pth`` or a ``.safetensors`` file. Pickles are read only with
``torch.load(weights_only=True)``; anything that needs arbitrary code to unpickle is refused.

Key map (the official repo and timm share the keys):
conv kernel (D,C,p,p) -> HWIO; Linear (out,in) -> (in,out); fused qkv rows [q; k; v] ->
(D, 3, heads, head_dim); attn.proj -> (heads, head_dim, D); LayerNorm weight -> scale.
A different resolution resamples the patch part of ``pos_embed`` exactly like the
official fine-tuning code (torch bicubic, align_corners=False); a different class count
drops both heads and keeps the model's fresh initialisation of them.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from absl import logging

from deit_jax.errors import ConversionError
from deit_jax.models.pos_embed import resample_pos_embed
from deit_jax.models.registry import create_model
from deit_jax.models.vit import VisionTransformer

_HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


# ---------------------------------------------------------------------------
# Reading weights files
# ---------------------------------------------------------------------------

def _to_numpy(tensor) -> np.ndarray:
  if hasattr(tensor, "detach"):  # torch.Tensor (bf16/fp16 have no exact numpy twin)
    tensor = tensor.detach().cpu()
    if not tensor.is_floating_point():
      return tensor.numpy()
    return tensor.float().numpy()
  return np.asarray(tensor)


def _unwrap(obj: Any, path: str) -> dict[str, Any]:
  """Finds the state dict inside an official/timm/DDP checkpoint."""
  if isinstance(obj, dict):
    for key in ("model", "state_dict", "model_ema"):
      if key in obj and isinstance(obj[key], dict):
        obj = obj[key]
        break
  if not isinstance(obj, dict) or not obj:
    raise ConversionError(f"{path}: no state dict found (expected a dict of tensors, "
                          f"optionally under 'model' or 'state_dict')")
  if all(isinstance(k, str) and k.startswith("module.") for k in obj):
    obj = {k[len("module."):]: v for k, v in obj.items()}  # saved from DistributedDataParallel
  return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file as ``{key: numpy array}``."""
  path = str(path)
  if not os.path.isfile(path):
    raise ConversionError(f"weights file not found: {path}")
  # safetensors and torch are optional (the [torch] extra): imported only when needed.
  if path.endswith(".safetensors"):
    try:
      from safetensors import safe_open
    except ImportError as e:
      raise ConversionError("reading .safetensors needs the 'safetensors' package: "
                            "pip install 'deit_jax[torch]'") from e
    try:  # numpy via ml_dtypes covers bf16/fp16 too; no torch needed
      with safe_open(path, framework="numpy") as f:
        return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers
      raise ConversionError(f"{path}: not a readable safetensors file ({e})") from e
  try:
    import torch
  except ImportError as e:
    raise ConversionError(f"reading {path} needs PyTorch: pip install 'deit_jax[torch]' "
                          "(or convert the file to .safetensors)") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConversionError(
        f"refusing to load {path}: it is not a plain weights file and unpickling it could "
        f"run arbitrary code ({first_line}). Only weights-only pickles or .safetensors "
        "are accepted.") from e
  except (RuntimeError, EOFError, OSError) as e:
    raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
  return {k: _to_numpy(v) for k, v in _unwrap(obj, path).items() if hasattr(v, "shape")}


# ---------------------------------------------------------------------------
# Key map
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Entry:
  path: tuple[str | int, ...]                          # attribute path in the NNX model
  transform: Callable[[np.ndarray], np.ndarray] = lambda w: w


def _key_map(model: VisionTransformer) -> dict[str, _Entry]:
  cfg = model.config
  d, h, k = cfg.embed_dim, cfg.num_heads, cfg.head_dim
  linear_t = lambda w: w.T
  entries = {
      "cls_token": _Entry(("cls_token",)),
      "pos_embed": _Entry(("pos_embed",)),
      "patch_embed.proj.weight": _Entry(("patch_embed", "kernel"),
                                        lambda w: w.transpose(2, 3, 1, 0)),
      "patch_embed.proj.bias": _Entry(("patch_embed", "bias")),
      "norm.weight": _Entry(("norm", "scale")),
      "norm.bias": _Entry(("norm", "bias")),
      "head.weight": _Entry(("head", "kernel"), linear_t),
      "head.bias": _Entry(("head", "bias")),
  }
  if cfg.distilled:
    entries["dist_token"] = _Entry(("dist_token",))
    entries["head_dist.weight"] = _Entry(("head_dist", "kernel"), linear_t)
    entries["head_dist.bias"] = _Entry(("head_dist", "bias"))
  for i in range(cfg.depth):
    p = f"blocks.{i}."
    blk = ("blocks", i)
    entries.update({
        p + "norm1.weight": _Entry(blk + ("norm1", "scale")),
        p + "norm1.bias": _Entry(blk + ("norm1", "bias")),
        p + "attn.qkv.weight": _Entry(blk + ("attn", "qkv_kernel"),
                                      lambda w: w.T.reshape(d, 3, h, k)),
        p + "attn.proj.weight": _Entry(blk + ("attn", "proj_kernel"),
                                       lambda w: w.T.reshape(h, k, d)),
        p + "attn.proj.bias": _Entry(blk + ("attn", "proj_bias")),
        p + "norm2.weight": _Entry(blk + ("norm2", "scale")),
        p + "norm2.bias": _Entry(blk + ("norm2", "bias")),
        p + "mlp.fc1.weight": _Entry(blk + ("mlp", "fc1", "kernel"), linear_t),
        p + "mlp.fc1.bias": _Entry(blk + ("mlp", "fc1", "bias")),
        p + "mlp.fc2.weight": _Entry(blk + ("mlp", "fc2", "kernel"), linear_t),
        p + "mlp.fc2.bias": _Entry(blk + ("mlp", "fc2", "bias")),
    })
    if cfg.qkv_bias:
      entries[p + "attn.qkv.bias"] = _Entry(blk + ("attn", "qkv_bias"),
                                            lambda w: w.reshape(3, h, k))
  return entries


def _is_square_grid(pos_embed: np.ndarray, cfg) -> bool:
  """Whether ``pos_embed`` is (1, prefix + g*g, D) for this model's prefix and width."""
  if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or pos_embed.shape[2] != cfg.embed_dim:
    return False
  patches = pos_embed.shape[1] - cfg.num_prefix_tokens
  return patches > 0 and int(round(np.sqrt(patches))) ** 2 == patches


def _variable(model, path):
  node = model
  for part in path:
    node = node[part] if isinstance(part, int) else getattr(node, part)
  return node


def apply_state_dict(model: VisionTransformer, state_dict: dict[str, np.ndarray]) -> list[str]:
  """Copies torch weights into ``model`` in place; returns notes on what was adapted.

  Raises ConversionError listing every missing, unexpected and mismatched key at once.
  """
  if not isinstance(model, VisionTransformer):
    raise ConversionError(f"{type(model).__name__} models have no PyTorch key map")
  cfg = model.config
  entries = _key_map(model)
  missing = sorted(set(entries) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(entries))
  mismatched, notes, updates = [], [], {}

  head_shape = state_dict.get("head.weight", np.zeros((0, 0))).shape
  if head_shape and head_shape[0] != cfg.num_classes and head_shape[1:] == (cfg.embed_dim,):
    notes.append(f"checkpoint heads have {head_shape[0]} classes, the model {cfg.num_classes}: "
                 "dropped the checkpoint heads and kept freshly initialised ones")
    skip = set(_HEAD_KEYS)
  else:
    skip = set()

  for key, entry in entries.items():
    if key in missing or key in skip:
      continue
    value = np.asarray(state_dict[key], np.float32)
    var = _variable(model, entry.path)
    if key == "pos_embed" and value.shape != var.shape and _is_square_grid(value, cfg):
      old = value.shape[1] - cfg.num_prefix_tokens
      value = resample_pos_embed(value, cfg.num_prefix_tokens, cfg.grid_size)
      notes.append(f"resampled pos_embed from {old} to {cfg.num_patches} patches "
                   "(bicubic, prefix tokens kept)")
    else:
      try:
        value = entry.transform(value)
      except ValueError:
        pass  # a reshape that cannot apply is reported as a shape mismatch below
    if value.shape != var.shape:
      mismatched.append(f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model "
                        f"{tuple(var.shape)} (after layout change {tuple(value.shape)})")
      continue
    updates[entry.path] = value

  if missing or unexpected or mismatched:
    parts = []
    if missing:
      parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
      parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
    raise ConversionError("checkpoint does not fit the model: " + " | ".join(parts))

  for path, value in updates.items():
    var = _variable(model, path)
    var.set_value(jnp.asarray(value, var.dtype))
  for note in notes:
    logging.warning("%s", note)
  return notes


def load_torch_checkpoint(path: str | os.PathLike, name: str, **overrides: Any):
  """Builds ``create_model(name, **overrides)`` and fills it with the weights at ``path``."""
  state_dict = read_state_dict(path)
  model = create_model(name, **overrides)
  try:
    apply_state_dict(model, state_dict)
  except ConversionError as e:
    raise ConversionError(f"{path} -> {name}: {e}") from None
  return model
