"""Every file in configs/ loads (each variant too) and has the base config's keys."""

import importlib
import inspect
import pathlib
import sys

import numpy as np
import pytest

from configs import imagenet_recipe
from deit_jax import builder
from deit_jax.models import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ is imported as config_flags imports it: from the root

NOT_CONFIGS = {"imagenet_recipe"}  # a helper the ImageNet configs call


def _flat_keys(config, prefix=""):
  keys = set()
  for key, value in config.items():
    if hasattr(value, "items"):
      keys |= _flat_keys(value, f"{prefix}{key}.")
    else:
      keys.add(prefix + key)
  return keys


def _configs():
  for path in sorted((ROOT / "configs").glob("*.py")):
    if path.stem in NOT_CONFIGS or path.stem.startswith("_"):
      continue
    module = importlib.import_module(f"configs.{path.stem}")
    takes_variant = bool(inspect.signature(module.get_config).parameters)
    for variant in (module.VARIANTS if takes_variant else [None]):
      yield f"{path.stem}" + (f":{variant}" if variant else ""), module, variant


def _load(module, variant):
  return module.get_config() if variant is None else module.get_config(variant)


def _keys_outside_model(config):
  # model.* are the chosen model's overrides, which differ by architecture.
  return {k for k in _flat_keys(config) if not k.startswith("model.")} | {"model.name"}


def test_every_config_loads_with_the_base_key_set():
  from configs import default
  base = _keys_outside_model(default.get_config())
  names = []
  for name, module, variant in _configs():
    config = _load(module, variant)
    names.append(name)
    assert _keys_outside_model(config) == base, name
    if name != "default":
      assert config.model.name != "REQUIRED", name
  # Every variant-taking config says which variants it has.
  assert {"deit_tiny:hard", "deit_base:none", "fashion_mnist_deit_tiny",
          "fashion_mnist_resnet_teacher:full", "deit_base_384_finetune:soft"} <= set(names)


@pytest.mark.parametrize("name", ["fashion_mnist_deit_tiny_distilled",
                                  "fashion_mnist_resnet_teacher", "deit_tiny"])
def test_an_unknown_variant_is_named(name):
  module = importlib.import_module(f"configs.{name}")
  with pytest.raises(ValueError, match="variant"):
    module.get_config("nope")


# ImageNet: one variant per row of the paper's Table 3, with its model and loss.
SIZES = ("deit_tiny", "deit_small", "deit_base", "deit_base_384_finetune")
ROWS = {  # variant -> (distill.type, distilled model)
    "none": ("none", False), "soft_cls": ("soft", False), "hard_cls": ("hard", False),
    "hard": ("hard", True), "soft": ("soft", True), "online": ("hard", True)}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("variant", imagenet_recipe.VARIANTS)
def test_every_variant_loads(size, variant):
  config = importlib.import_module(f"configs.{size}").get_config(variant)
  distill_type, distilled = ROWS[variant]
  assert config.distill.type == distill_type
  assert ("_distilled_" in config.model.name) == distilled
  assert config.model.name in registry.list_models()
  registry.model_config(config.model.name, **builder.model_overrides(config))  # validates
  if variant == "soft_cls":  # the paper's soft setting
    assert (config.distill.tau, config.distill.alpha, config.distill.kl_reduction) == (
        3.0, 0.1, "batchmean")


def test_default_is_the_distilled_hard_row_and_unknown_variants_are_named():
  assert importlib.import_module("configs.deit_small").get_config().model.name == \
      "deit_small_distilled_patch16_224"
  with pytest.raises(ValueError, match="hard_cls"):
    imagenet_recipe.recipe("tiny", "hard-cls")


# ---------------------------------------------------------------------------
# The first batch of every config, at its own global batch
# ---------------------------------------------------------------------------

V4_32_HOSTS = 4  # the ImageNet and transfer configs' documented slice (docs/launch.md)


def _stand_in_source(num_examples: int, num_classes: int = 10):
  """ImageNet-like encoded photos (JPEGs of a few sizes) standing for a config's dataset:
  only the data location may differ from the config as shipped."""
  import tensorflow as tf

  from deit_jax.data import sources
  rng = np.random.RandomState(0)
  jpegs = tf.constant([tf.io.encode_jpeg(rng.randint(0, 255, (h, w, 3)).astype(np.uint8))
                       .numpy() for h, w in ((375, 500), (500, 333), (240, 320))])

  def fetch(index):
    index = tf.cast(index, tf.int64)
    return {"image": tf.gather(jpegs, index % 3), "label": index % num_classes, "id": index}

  return sources.Source("stand-in", "train", num_examples, num_classes, 3, True, fetch)


def test_first_batch_of_every_config_at_its_own_batch(fmnist_data_dir):
  """Each config file and variant in configs/ as shipped (no override but the data): its
  train stream at its global batch, batch_groups and repeated augmentation, as the last
  host of its slice draws it (4 hosts of a v4-32 for ImageNet and transfer, one CPU
  process for Fashion-MNIST). Configs that read the data identically share one draw."""
  from deit_jax import config_glue
  from deit_jax.data import pipeline
  drawn = {}
  for name, module, variant in _configs():
    if name == "default":
      continue
    config = _load(module, variant)
    augment = config_glue.augment_config(config)
    fashion = config.dataset == "fashion_mnist"
    hosts = 1 if fashion else V4_32_HOSTS
    host = pipeline.HostSlice(config.batch_size, hosts - 1, hosts, config.batch_groups)
    key = (augment, host, config.dataset if fashion else "stand-in")
    if key not in drawn:
      if fashion:
        config.data_dir = fmnist_data_dir  # the data location: the one override allowed
        source = config_glue.open_split(config, config.train_split)
      else:
        source = _stand_in_source(config.batch_size + 76)
      drawn[key] = next(pipeline.TrainIterator(source, augment, host, seed=config.seed))
    batch = drawn[key]
    size, channels = augment.image_size, augment.in_chans
    assert batch["image"].shape == (config.batch_size // hosts, size, size, channels), name
    assert ((batch["label"] >= 0) & (batch["label"] < config.num_classes)).all(), name
    if augment.repeated_aug > 1 and config.batch_groups > 1:
      # an image's copies land in consecutive groups ("GPUs"): this host's rows hold at most
      # as many copies as it holds groups
      _, counts = np.unique(batch["id"], return_counts=True)
      assert counts.max() <= min(augment.repeated_aug, -(-config.batch_groups // hosts)), name
  assert len(drawn) >= 3
