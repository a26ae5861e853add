"""Models in Flax NNX (DeiT/ViT, RegNetY, CIFAR ResNets) and the registry that names them
like timm.

``create_model`` here is the public one: ``create_model(name, pretrained=True)`` loads the
official weights through ``deit_jax.models.pretrained`` (download, verify, convert once into
a flat parameter file), which needs nothing above this package.
"""

from typing import Any

from flax import nnx

from deit_jax.models import pretrained as weights, registry, regnet, vit
from deit_jax.models.pos_embed import resample_pos_embed
from deit_jax.models.registry import list_models, model_config, register_model
from deit_jax.models.regnet import RegNet, RegNetConfig
from deit_jax.models.resnet import ResNet, ResNetConfig
from deit_jax.models.vit import DeiTConfig, VisionTransformer


def create_model(name: str, *, seed: int = 0, rngs: nnx.Rngs | None = None,
                 pretrained: bool = False, **overrides: Any) -> nnx.Module:
  """Builds a registered model; ``overrides`` replace its architecture/numerics defaults.

  ``seed`` seeds the "params" stream and (seed + 1) the "dropout" stream; pass ``rngs``
  to control both yourself. ``pretrained=True`` loads the official weights
  (``deit_jax.models.pretrained.load``: another ``num_classes`` keeps freshly initialised heads
  seeded by ``seed``, another ``img_size`` resamples the position embedding).
  """
  if not pretrained:
    return registry.create_model(name, seed=seed, rngs=rngs, **overrides)
  model_config(name, **overrides)  # an unknown name or override fails before any download
  return weights.load(name, seed=seed, **overrides)


# Every logical axis name a parameter may carry; deit_jax.sharding.RULES maps each to a mesh axis.
LOGICAL_AXES = tuple(dict.fromkeys(vit.LOGICAL_AXES + regnet.LOGICAL_AXES))

__all__ = ["create_model", "list_models", "model_config", "register_model", "LOGICAL_AXES",
           "DeiTConfig", "VisionTransformer", "RegNet", "RegNetConfig", "ResNet",
           "ResNetConfig", "resample_pos_embed"]
