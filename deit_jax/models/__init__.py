"""Models: DeiT/ViT in Flax NNX and the registry that names them like timm."""

from deit_jax.models.pos_embed import resample_pos_embed
from deit_jax.models.registry import create_model, list_models, model_config, register_model
from deit_jax.models.resnet import ResNet, ResNetConfig
from deit_jax.models.vit import LOGICAL_AXES, DeiTConfig, VisionTransformer

__all__ = ["create_model", "list_models", "model_config", "register_model", "LOGICAL_AXES",
           "DeiTConfig", "VisionTransformer", "ResNet", "ResNetConfig", "resample_pos_embed"]
