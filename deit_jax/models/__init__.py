"""Models in Flax NNX (DeiT/ViT, RegNetY, CIFAR ResNets) and the registry that names them
like timm."""

from deit_jax.models import regnet, vit
from deit_jax.models.pos_embed import resample_pos_embed
from deit_jax.models.registry import create_model, list_models, model_config, register_model
from deit_jax.models.regnet import RegNet, RegNetConfig
from deit_jax.models.resnet import ResNet, ResNetConfig
from deit_jax.models.vit import DeiTConfig, VisionTransformer

# Every logical axis name a parameter may carry; deit_jax.sharding.RULES maps each to a mesh axis.
LOGICAL_AXES = tuple(dict.fromkeys(vit.LOGICAL_AXES + regnet.LOGICAL_AXES))

__all__ = ["create_model", "list_models", "model_config", "register_model", "LOGICAL_AXES",
           "DeiTConfig", "VisionTransformer", "RegNet", "RegNetConfig", "ResNet",
           "ResNetConfig", "resample_pos_embed"]
