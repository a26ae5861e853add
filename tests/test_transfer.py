"""The transfer-learning configs (paper Table 7): every variant loads with its published
recipe, and one runs end to end on a stand-in dataset (the real ones need downloads)."""

import pytest

from configs import transfer


@pytest.mark.parametrize("variant", transfer.VARIANTS)
def test_every_variant_loads_with_its_recipe(variant):
  config = transfer.get_config(variant)
  dataset = variant.split(",")[0]
  assert config.num_classes == transfer.DATASETS[dataset][3]
  assert config.aug.image_size == (384 if "384" in variant else 224)
  assert config.model.name.endswith(str(config.aug.image_size))
  assert config.model.name.startswith("deit_base_distilled" if "distilled" in variant
                                      else "deit_base_patch16")
  assert config.distill.type == ("hard" if "distilled" in variant else "none")
  if dataset in ("cifar10", "cars", "flowers"):
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.weight_decay) == \
        ("sgd", 0.01, 1e-4)
    assert config.model.drop_path_rate == 0 and config.aug.random_erasing == 0
  else:
    assert config.optimizer.name == "adamw" and config.model.drop_path_rate == 0.1


def test_bad_variant_is_named():
  with pytest.raises(ValueError, match="cifar11"):
    transfer.get_config("cifar11")


def test_sgd_recipe_trains_on_a_stand_in(fmnist_data_dir, tmp_path):
  """configs/transfer.py:cifar10 as it is (SGD, no erasing or drop-path, RandAugment,
  Mixup/CutMix, repeated augmentation, upscaling) on 3 Fashion-MNIST classes, tiny model."""
  from deit_jax import main
  config = transfer.get_config("cifar10")
  config.update(dict(dataset="fashion_mnist", data_dir=fmnist_data_dir, num_classes=3,
                     batch_size=32, total_steps=3, init_from="", log_every_steps=1,
                     eval_every_steps=0, checkpoint_every_steps=0))
  config.subset.classes = "0,1,2"
  config.model.update(dict(img_size=32, in_chans=1, embed_dim=32, depth=1, num_heads=2,
                           dtype="float32"))
  config.aug.update(dict(image_size=32, in_chans=1, mean=(0.286,), std=(0.353,)))
  result = main.train(config, str(tmp_path))
  assert result["eval_num_examples"] == 3000  # the three classes' whole test split
  rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert sum('"train_loss"' in row for row in rows) == 3
