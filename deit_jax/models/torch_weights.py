"""Official DeiT / timm PyTorch weights -> our NNX models (the command line is
``deit_jax.convert``).

Accepts an official DeiT checkpoint (``{"model": state_dict, ...}``), a plain timm
state_dict ``.pth`` or a ``.safetensors`` file. Pickles are read only with
``torch.load(weights_only=True)``; anything that needs arbitrary code to unpickle is refused.

DeiT key map (official and timm share keys; ``deit_jax.export`` applies every map in
reverse): conv kernel (D,C,p,p) -> HWIO; Linear (out,in) -> (in,out); fused qkv rows
[q; k; v] -> (D, 3, heads, head_dim); attn.proj -> (heads, head_dim, D); LayerNorm weight
-> scale. A different resolution resamples the patch part of ``pos_embed`` exactly like
the official fine-tuning code (torch bicubic, align_corners=False); a different class
count drops both heads and keeps the model's fresh initialisation of them.

RegNetY key map (timm's ``regnet.py``; the official DeiT teacher file
``regnety_160-a5fe301d.pth`` holds the same keys under "model"): ``stem``/``s{i}.b{j}``
ConvNormAct -> conv kernel HWIO, BatchNorm weight/bias -> scale/bias and running_mean/var
-> the BatchStat mean/var; SE 1x1 convs -> dense kernels; ``head.fc`` -> ``head``. A
teacher's head is never re-initialised: weights of another width, depth, class count or
input channel count are refused with what they are.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from deit_jax import torch_stack
from deit_jax.errors import ConversionError
from deit_jax.models.pos_embed import resample_pos_embed
from deit_jax.models.registry import create_model
from deit_jax.models.regnet import REGNETY, RegNet, regnet_stages
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
    torch = torch_stack.import_torch()  # safe after TensorFlow (deit_jax.torch_stack)
  except ImportError as e:
    raise ConversionError(f"reading {path} needs PyTorch: pip install 'deit_jax[torch]' "
                          "(or convert the file to .safetensors)") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError:
    # PyTorch's own message is a paragraph about weights_only; one sentence is enough.
    raise ConversionError(
        f"refusing to load {path}: it holds Python objects besides tensors, and unpickling "
        "them could run arbitrary code; if you trust the file, re-save its state dict as "
        ".safetensors (or a plain torch.save of the tensors) and convert that") from None
  except (RuntimeError, EOFError, OSError) as e:
    raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
  return {k: _to_numpy(v) for k, v in _unwrap(obj, path).items() if hasattr(v, "shape")}


# ---------------------------------------------------------------------------
# Key map
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Entry:
  """One torch key: where it lives in the NNX model and how its layout differs.

  ``to_ours`` turns the torch array into ours, ``to_torch`` is its inverse; import
  (``apply_state_dict``) and export (``deit_jax.export``) read the same table.
  """
  path: tuple[str | int, ...]                          # attribute path in the NNX model
  to_ours: Callable[[np.ndarray], np.ndarray] = lambda w: w
  to_torch: Callable[[np.ndarray], np.ndarray] = lambda w: w


def _linear(path) -> Entry:  # torch Linear (out, in) <-> (in, out)
  return Entry(path, lambda w: w.T, lambda w: w.T)


def _vit_key_map(model: VisionTransformer) -> dict[str, Entry]:
  cfg = model.config
  d, h, k = cfg.embed_dim, cfg.num_heads, cfg.head_dim
  entries = {
      "cls_token": Entry(("cls_token",)),
      "pos_embed": Entry(("pos_embed",)),
      "patch_embed.proj.weight": Entry(("patch_embed", "kernel"),  # (D,C,p,p) <-> HWIO
                                       lambda w: w.transpose(2, 3, 1, 0),
                                       lambda w: w.transpose(3, 2, 0, 1)),
      "patch_embed.proj.bias": Entry(("patch_embed", "bias")),
      "norm.weight": Entry(("norm", "scale")),
      "norm.bias": Entry(("norm", "bias")),
      "head.weight": _linear(("head", "kernel")),
      "head.bias": Entry(("head", "bias")),
  }
  if cfg.distilled:
    entries["dist_token"] = Entry(("dist_token",))
    entries["head_dist.weight"] = _linear(("head_dist", "kernel"))
    entries["head_dist.bias"] = Entry(("head_dist", "bias"))
  for i in range(cfg.depth):
    p = f"blocks.{i}."
    blk = ("blocks", i)
    entries.update({
        p + "norm1.weight": Entry(blk + ("norm1", "scale")),
        p + "norm1.bias": Entry(blk + ("norm1", "bias")),
        # fused qkv rows [q; k; v] <-> (D, 3, heads, head_dim)
        p + "attn.qkv.weight": Entry(blk + ("attn", "qkv_kernel"),
                                     lambda w: w.T.reshape(d, 3, h, k),
                                     lambda w: w.reshape(d, 3 * h * k).T),
        p + "attn.proj.weight": Entry(blk + ("attn", "proj_kernel"),
                                      lambda w: w.T.reshape(h, k, d),
                                      lambda w: w.reshape(h * k, d).T),
        p + "attn.proj.bias": Entry(blk + ("attn", "proj_bias")),
        p + "norm2.weight": Entry(blk + ("norm2", "scale")),
        p + "norm2.bias": Entry(blk + ("norm2", "bias")),
        p + "mlp.fc1.weight": _linear(blk + ("mlp", "fc1", "kernel")),
        p + "mlp.fc1.bias": Entry(blk + ("mlp", "fc1", "bias")),
        p + "mlp.fc2.weight": _linear(blk + ("mlp", "fc2", "kernel")),
        p + "mlp.fc2.bias": Entry(blk + ("mlp", "fc2", "bias")),
    })
    if cfg.qkv_bias:
      entries[p + "attn.qkv.bias"] = Entry(blk + ("attn", "qkv_bias"),
                                           lambda w: w.reshape(3, h, k),
                                           lambda w: w.reshape(3 * h * k))
  return entries


def _regnet_key_map(model: RegNet) -> dict[str, Entry]:
  hwio = lambda w: w.transpose(2, 3, 1, 0)
  oihw = lambda w: w.transpose(3, 2, 0, 1)
  dense_1x1 = lambda w: w.reshape(w.shape[0], -1).T  # (out, in, 1, 1) -> (in, out)
  conv_1x1 = lambda w: w.T[:, :, None, None]
  entries = {}

  def conv_norm(prefix: str, path: tuple) -> None:
    entries[prefix + "conv.weight"] = Entry(path + ("conv", "kernel"), hwio, oihw)
    for theirs, ours in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
                         ("running_var", "var")):
      entries[f"{prefix}bn.{theirs}"] = Entry(path + ("bn", ours))

  conv_norm("stem.", ("stem",))
  for i, stage in enumerate(model.stages):
    for j, block in enumerate(stage):
      p, path = f"s{i + 1}.b{j + 1}.", ("stages", i, j)
      for name in ("conv1", "conv2", "conv3"):
        conv_norm(f"{p}{name}.", path + (name,))
      if block.downsample is not None:
        conv_norm(p + "downsample.", path + ("downsample",))
      if block.se is not None:
        for fc in ("fc1", "fc2"):
          entries[f"{p}se.{fc}.weight"] = Entry(path + ("se", fc, "kernel"), dense_1x1,
                                                conv_1x1)
          entries[f"{p}se.{fc}.bias"] = Entry(path + ("se", fc, "bias"))
  entries["head.fc.weight"] = _linear(("head", "kernel"))
  entries["head.fc.bias"] = Entry(("head", "bias"))
  return entries


def _regnet_signature(state_dict: dict[str, np.ndarray]) -> dict[str, Any] | None:
  """What a timm RegNet state dict was built as (None if it is not one)."""
  stages = []
  for i in range(1, 5):
    blocks = {int(k.split(".")[1][1:]) for k in state_dict
              if k.startswith(f"s{i}.b") and k.endswith(".conv1.conv.weight")}
    if not blocks:
      return None
    stages.append((int(state_dict[f"s{i}.b1.conv1.conv.weight"].shape[0]), max(blocks)))
  stem, head = state_dict.get("stem.conv.weight"), state_dict.get("head.fc.weight")
  if stem is None or head is None:
    return None
  return {"stages": stages, "in_chans": int(stem.shape[1]), "num_classes": int(head.shape[0])}


def _check_regnet(model: RegNet, state_dict: dict[str, np.ndarray]) -> None:
  """One sentence for weights of another RegNet shape, before any key-by-key listing."""
  found = _regnet_signature(state_dict)
  if found is None:
    return
  cfg = model.config
  ours = [(w, d) for w, d, _ in cfg.stages]
  if found["stages"] != ours:
    matches = [name for name, (w0, wa, wm, depth, group) in REGNETY.items()
               if [(w, d) for w, d, _ in regnet_stages(w0, wa, wm, depth, group)]
               == found["stages"]]
    which = f" (that is {' or '.join(matches)})" if matches else ""
    raise ConversionError(
        f"the weights are of a RegNet with stage (width, blocks) {found['stages']}{which}; "
        f"the model has {ours}")
  for key, flag in (("num_classes", "--num_classes"), ("in_chans", "--in_chans")):
    if found[key] != getattr(cfg, key):
      raise ConversionError(f"the weights have {key}={found[key]}, the model "
                            f"{getattr(cfg, key)} (pass {flag}={found[key]}, or other weights)")


@dataclasses.dataclass(frozen=True)
class TimmFamily:
  """How one model family maps onto timm: its key table and the config fields that
  timm's constructor takes as keyword arguments (for export)."""
  key_map: Callable[[Any], dict[str, Entry]]
  timm_kwargs: tuple[str, ...]


# Model class -> its timm mapping. A model family with timm weights adds one entry here;
# import (apply_state_dict) and export (deit_jax.export) both follow it.
FAMILIES: dict[type, TimmFamily] = {
    VisionTransformer: TimmFamily(_vit_key_map, (
        "num_classes", "img_size", "patch_size", "in_chans", "embed_dim", "depth",
        "num_heads", "mlp_ratio", "qkv_bias")),
    RegNet: TimmFamily(_regnet_key_map, ("num_classes", "in_chans")),
}


def timm_family(model) -> TimmFamily:
  """The family of ``model``; ConversionError for one without a timm counterpart."""
  for cls, family in FAMILIES.items():
    if isinstance(model, cls):
      return family
  raise ConversionError(f"{type(model).__name__} models have no timm counterpart (families "
                        f"with one: {', '.join(c.__name__ for c in FAMILIES)})")


def key_map(model) -> dict[str, Entry]:
  """{torch key: Entry} of ``model``."""
  return timm_family(model).key_map(model)


def to_state_dict(model) -> dict[str, np.ndarray]:
  """``model``'s parameters under timm's keys and layouts (float32, C-contiguous): the
  key table run in reverse (``deit_jax.export`` writes it to a file)."""
  out = {}
  for key, entry in key_map(model).items():
    value = np.asarray(variable(model, entry.path)[...], np.float32)
    out[key] = np.array(entry.to_torch(value), order="C")  # a writable copy
    if key.endswith("bn.running_var"):  # timm's BatchNorm also keeps an update counter
      out[key.replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
  return out


def _is_square_grid(pos_embed: np.ndarray, cfg) -> bool:
  """Whether ``pos_embed`` is (1, prefix + g*g, D) for this model's prefix and width."""
  if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or pos_embed.shape[2] != cfg.embed_dim:
    return False
  patches = pos_embed.shape[1] - cfg.num_prefix_tokens
  return patches > 0 and int(round(np.sqrt(patches))) ** 2 == patches


def variable(model, path):
  node = model
  for part in path:
    node = node[part] if isinstance(part, int) else getattr(node, part)
  return node


def apply_state_dict(model: VisionTransformer | RegNet,
                     state_dict: dict[str, np.ndarray]) -> list[str]:
  """Copies torch weights into ``model`` in place; returns notes on what was adapted.

  Raises ConversionError listing every missing, unexpected and mismatched key at once.
  """
  updates, notes = _match(model, state_dict)
  _assign(model, updates, notes)
  return notes


def check_fits(name: str, state_dict: dict[str, np.ndarray], **overrides: Any) -> None:
  """Raises ConversionError (every missing, unexpected and mismatched key) unless
  ``state_dict`` fits ``create_model(name, **overrides)``; builds no parameters."""
  _match(nnx.eval_shape(lambda: create_model(name, **overrides)), state_dict)


def _match(model, state_dict: dict[str, np.ndarray]) -> tuple[dict, list[str]]:
  """The values to assign, by attribute path, and notes; needs only shapes, so ``model``
  may be abstract (``nnx.eval_shape``)."""
  cfg = model.config
  notes, skip = [], set()
  if isinstance(model, RegNet):
    _check_regnet(model, state_dict)
    entries = key_map(model)
    # BatchNorm's update counter has no use here (our momentum is fixed).
    state_dict = {k: v for k, v in state_dict.items()
                  if not k.endswith(".num_batches_tracked")}
  elif isinstance(model, VisionTransformer):
    entries = key_map(model)
    head_shape = state_dict.get("head.weight", np.zeros((0, 0))).shape
    if head_shape and head_shape[0] != cfg.num_classes and head_shape[1:] == (cfg.embed_dim,):
      notes.append(f"checkpoint heads have {head_shape[0]} classes, the model "
                   f"{cfg.num_classes}: dropped the checkpoint heads and kept freshly "
                   "initialised ones")
      skip = set(_HEAD_KEYS)
  else:
    entries = key_map(model)  # ConversionError for a family without a timm counterpart
  missing = sorted(set(entries) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(entries))
  mismatched, updates = [], {}

  for key, entry in entries.items():
    if key in missing or key in skip:
      continue
    value = np.asarray(state_dict[key], np.float32)
    var = variable(model, entry.path)
    if key == "pos_embed" and value.shape != var.shape and _is_square_grid(value, cfg):
      old = value.shape[1] - cfg.num_prefix_tokens
      value = resample_pos_embed(value, cfg.num_prefix_tokens, cfg.grid_size)
      notes.append(f"resampled pos_embed from {old} to {cfg.num_patches} patches "
                   "(bicubic, prefix tokens kept)")
    else:
      try:
        value = entry.to_ours(value)
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
  return updates, notes


def _assign(model, updates: dict, notes: list[str]) -> None:
  for path, value in updates.items():
    var = variable(model, path)
    var.set_value(jnp.asarray(value, var.dtype))
  for note in notes:
    logging.warning("%s", note)


def load_torch_checkpoint(path: str | os.PathLike, name: str, **overrides: Any):
  """Builds ``create_model(name, **overrides)`` and fills it with the weights at ``path``.

  Weights that do not fit are refused before the model is initialised (which takes a
  while for large models on CPU).
  """
  state_dict = read_state_dict(path)
  abstract = nnx.eval_shape(lambda: create_model(name, **overrides))
  try:
    updates, notes = _match(abstract, state_dict)
  except ConversionError as e:
    raise ConversionError(f"{path} -> {name}: {e}") from None
  model = create_model(name, **overrides)
  _assign(model, updates, notes)
  return model
