"""Every ImageNet config variant loads and picks the model and loss of its Table 3 row."""

import importlib

import pytest

from configs import imagenet_recipe
from deit_jax import cli
from deit_jax.models import registry

SIZES = ("deit_tiny", "deit_small", "deit_base", "deit_base_384_finetune")
ROWS = {  # variant -> (distill.type, distilled model)
    "none": ("none", False), "soft_cls": ("soft", False), "hard_cls": ("hard", False),
    "hard": ("hard", True), "soft": ("soft", True)}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("variant", imagenet_recipe.VARIANTS)
def test_every_variant_loads(size, variant):
  config = importlib.import_module(f"configs.{size}").get_config(variant)
  distill_type, distilled = ROWS[variant]
  assert config.distill.type == distill_type
  assert ("_distilled_" in config.model.name) == distilled
  assert config.model.name in registry.list_models()
  registry.model_config(config.model.name, **cli.model_overrides(config))  # validates
  if variant == "soft_cls":  # the paper's soft setting
    assert (config.distill.tau, config.distill.alpha, config.distill.kl_reduction) == (
        3.0, 0.1, "batchmean")


def test_default_is_the_distilled_hard_row_and_unknown_variants_are_named():
  assert importlib.import_module("configs.deit_small").get_config().model.name == \
      "deit_small_distilled_patch16_224"
  with pytest.raises(ValueError, match="hard_cls"):
    imagenet_recipe.recipe("tiny", "hard-cls")
