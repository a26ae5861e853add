"""Model registry with timm's names: ``create_model("deit_small_distilled_patch16_224")``."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

from deit_jax.errors import ConfigError
from deit_jax.models.regnet import REGNETY, RegNet, RegNetConfig
from deit_jax.models.resnet import ResNet, ResNetConfig
from deit_jax.models.vit import DeiTConfig, VisionTransformer

# name -> (factory(rngs=..., **config) -> module, accepted config keys, defaults)
_REGISTRY: dict[str, tuple[Callable[..., nnx.Module], frozenset[str], dict[str, Any]]] = {}


def register_model(name: str, factory: Callable[..., nnx.Module], config_cls: type,
                   **defaults: Any) -> None:
  """Registers ``factory(rngs=..., **config)`` under ``name``.

  ``config_cls`` is the dataclass whose fields are the keys users may override;
  ``defaults`` are this variant's values for some of them.
  """
  if name in _REGISTRY:
    raise ValueError(f"model {name!r} is already registered")
  fields = frozenset(f.name for f in dataclasses.fields(config_cls))
  assert set(defaults) <= fields, sorted(set(defaults) - fields)
  _REGISTRY[name] = (factory, fields, defaults)


def list_models() -> list[str]:
  return sorted(_REGISTRY)


def _vit_factory(*, rngs: nnx.Rngs, **config: Any) -> VisionTransformer:
  return VisionTransformer(DeiTConfig(**config), rngs=rngs)


def _resnet_factory(*, rngs: nnx.Rngs, **config: Any) -> ResNet:
  return ResNet(ResNetConfig(**config), rngs=rngs)


def _regnet_factory(*, rngs: nnx.Rngs, **config: Any) -> RegNet:
  return RegNet(RegNetConfig(**config), rngs=rngs)


def _lookup(name: str):
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, _REGISTRY, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown model {name!r}{hint} (known: {', '.join(list_models())})")
  return _REGISTRY[name]


def _normalise(key: str, value: Any) -> Any:
  if key in ("dtype", "param_dtype") and not isinstance(value, str):
    try:
      return jnp.dtype(value).name  # keep configs JSON-serialisable
    except TypeError:
      return value  # DeiTConfig names the bad value
  return value


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
  """The full config dict ``create_model(name, **overrides)`` would build the model from."""
  _, allowed, defaults = _lookup(name)
  unknown = sorted(set(overrides) - allowed)
  if unknown:
    raise ConfigError(f"unknown override(s) {', '.join(map(repr, unknown))} for model {name!r}; "
                     f"valid keys: {', '.join(sorted(allowed))}")
  merged = dict(defaults)
  merged.update({k: _normalise(k, v) for k, v in overrides.items()})
  return merged


def create_model(name: str, *, seed: int = 0, rngs: nnx.Rngs | None = None,
                 **overrides: Any) -> nnx.Module:
  """Builds a registered model, freshly initialised; ``overrides`` replace its
  architecture/numerics defaults.

  ``seed`` seeds the "params" stream and (seed + 1) the "dropout" stream; pass ``rngs``
  to control both yourself. With the official weights (``pretrained=True``):
  ``deit_jax.models.create_model``.
  """
  factory, _, _ = _lookup(name)
  config = model_config(name, **overrides)
  if rngs is None:
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  return factory(rngs=rngs, **config)


_DEIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}
for _size, _img in [("tiny", 224), ("small", 224), ("base", 224), ("base", 384)]:
  for _distilled in (False, True):
    _name = f"deit_{_size}{'_distilled' if _distilled else ''}_patch16_{_img}"
    register_model(_name, _vit_factory, DeiTConfig, patch_size=16, img_size=_img,
                   distilled=_distilled, **_DEIT_SIZES[_size])

# Convnet teachers for small images (deit_jax.models.resnet); no timm counterpart.
for _depth in (8, 14, 20, 32, 56):
  register_model(f"cifar_resnet{_depth}", _resnet_factory, ResNetConfig, depth=_depth)

# RegNetY with timm's names and architecture (deit_jax.models.regnet); regnety_160 is the
# DeiT paper's teacher.
for _name, (_w0, _wa, _wm, _depth, _group) in REGNETY.items():
  register_model(_name, _regnet_factory, RegNetConfig, w0=_w0, wa=_wa, wm=_wm, depth=_depth,
                 group_size=_group)
