"""Image folders' class order (config.class_order) and the class names that checkpoints and
teacher logits record: data in another order is one line, never a silent relabelling."""

import dataclasses

import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from configs import default
from deit_jax import builder, checkpoint, config_glue, optim, sharding, train_step as ts
from deit_jax.data import pipeline, sources
from deit_jax.errors import (CheckpointMismatchError, DatasetError, TeacherLogitsError,
                             UserError)
from deit_jax.models import create_model
from deit_jax.teacher import precompute as pc

PNG = tf.io.encode_png(tf.zeros((8, 8, 3), tf.uint8)).numpy()
STRING_ORDER = ["0", "1", "10", "11", "2", "3", "4", "5", "6", "7", "8", "9"]


def _folder(root, classes, split="train"):
  for name in classes:
    (root / split / str(name)).mkdir(parents=True)
    (root / split / str(name) / f"{name}.png").write_bytes(PNG)
  return f"imagefolder:{root}"


def _labels(dataset, order="auto", split="train"):
  kwargs = {} if order == "auto" else {"class_order": order}
  source = sources.open_source(dataset, split, **kwargs)
  paths, _, names = sources.list_image_folder(dataset.split(":", 1)[1], split,
                                              kwargs.get("class_order", "auto"))
  labels = [int(x) for x in source.labels]
  return {p.split("/")[-2]: label for p, label in zip(paths, labels)}, list(names)


def test_one_to_n_folders_are_numeric_and_the_order_is_a_setting(tmp_path):
  """Flowers-102 as commonly unpacked (folders 1 ... N) reads by number under auto;
  0 ... N-1 too; string and numeric orders are there to choose; sparse integer ids ask
  for a choice in one line."""
  flowers = _folder(tmp_path / "flowers", range(1, 13))
  labels, names = _labels(flowers)
  assert labels == {str(k): k - 1 for k in range(1, 13)} and names[:3] == ["1", "2", "3"]

  zero_based = _folder(tmp_path / "v2", range(12))
  assert _labels(zero_based)[0] == {str(k): k for k in range(12)}
  labels, names = _labels(zero_based, "string")  # the order before integers were read
  assert names == STRING_ORDER and labels["10"] == 2 and labels["2"] == 4

  sparse = _folder(tmp_path / "sparse", (3, 7, 12, 40))
  with pytest.raises(DatasetError, match="class_order=numeric") as info:
    _labels(sparse)
  assert "\n" not in str(info.value)
  assert _labels(sparse, "numeric")[0] == {"3": 0, "7": 1, "12": 2, "40": 3}
  assert _labels(sparse, "string")[0] == {"12": 0, "3": 1, "40": 2, "7": 3}
  # A split beside a train/ of integers takes train's numbers; a folder missing there is
  # an error, never a relabelling by its own rank.
  _folder(tmp_path / "flowers", (3, 5, 13), split="val")
  with pytest.raises(DatasetError, match="not present in the train split: 13"):
    _labels(flowers, split="val")
  words = _folder(tmp_path / "words", ("cat", "dog", "7"))
  with pytest.raises(DatasetError, match="numeric needs integer class folders, found cat, dog"):
    _labels(words, "numeric")

  # The config key reaches the source; a TFDS dataset keeps its own order.
  config = default.get_config()
  config.dataset, config.num_classes, config.class_order = zero_based, 12, "string"
  assert list(config_glue.open_split(config, "train").class_names) == STRING_ORDER
  with pytest.raises(UserError, match="class_order='numeric' is for image folders"):
    sources.open_source("fashion_mnist", "train", class_order="numeric")


def _sources(tmp_path):
  """The same 12 integer folders read in numeric order (auto: 0 ... 11) and as string
  order names them (0, 1, 10, 11, 2, ...: how they were read before integers were)."""
  new = sources.open_source(_folder(tmp_path / "data", range(12)), "train")
  return dataclasses.replace(new, class_names=tuple(STRING_ORDER)), new


def test_a_checkpoint_refuses_data_in_another_class_order(tmp_path):
  old, new = _sources(tmp_path)
  config = default.get_config()
  config.num_classes = 12
  overrides = {"img_size": 32, "num_classes": 12, "depth": 1}

  # Resuming a run: check_compatible compares the recorded names with the run's (and the
  # epoch length, which places every step's examples).
  def meta(names, steps_per_epoch=15):
    return {"model": "deit_tiny_patch16_224", "model_config": overrides, "num_classes": 12,
            "dataset": "x", "ema": False, "class_names": list(names),
            "steps_per_epoch": steps_per_epoch}
  saver = checkpoint.TrainCheckpoints(tmp_path / "run", every_steps=1, keep=1)
  saver.save(1, {"x": np.zeros(2)}, {"step": 1}, meta(old.class_names))
  saver.wait()
  saver.check_compatible(1, meta(old.class_names))
  with pytest.raises(CheckpointMismatchError,
                     match="another order .* label 2 is 10 there and 2 in the data"):
    saver.check_compatible(1, meta(new.class_names))
  with pytest.raises(CheckpointMismatchError, match="steps per epoch: checkpoint 15 vs run 12"):
    saver.check_compatible(1, meta(old.class_names, 12))
  saver.close()
  named = builder.build_model("deit_tiny_patch16_224", overrides)
  assert builder.run_metadata(config, named, new.class_names)["class_names"] == [
      str(k) for k in range(12)]  # what main records
  model = create_model("deit_tiny_patch16_224", **overrides)

  # Evaluating or distilling from it: the model directory's names against the data's.
  checkpoint.save_model(tmp_path / "model", model, name=named.name, overrides=named.overrides,
                        class_names=old.class_names)
  config_glue.load_model_for(config, str(tmp_path / "model"), source=old)
  with pytest.raises(UserError, match="label 2 is 10 there and 2 in the data") as info:
    config_glue.load_model_for(config, str(tmp_path / "model"), role="teacher", source=new)
  assert "\n" not in str(info.value) and str(info.value).startswith("teacher ")

  # Fine-tuning from it with its heads kept: refused; init_from_head=reset is the way.
  tx = optim.adamw(optim.warmup_cosine(1e-3, 10, 1), nnx.to_pure_dict(ts.split_model(model)[1]))
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  shardings = ts.state_shardings(model, tx, mesh)
  state = jax.device_put(ts.init_state(model, tx, seed=0), shardings)
  with pytest.raises(UserError, match="init_from_head=reset starts new ones"):
    builder._init_from(state, str(tmp_path / "model"), named.overrides, shardings,
                       class_names=new.class_names, log=lambda _: None)
  builder._init_from(state, str(tmp_path / "model"), named.overrides, shardings, head="reset",
                     class_names=new.class_names, log=lambda _: None)


def test_teacher_logits_refuse_data_in_another_class_order(tmp_path):
  old, new = _sources(tmp_path)
  augment = pipeline.AugmentConfig(image_size=8, crop="pad_crop", randaugment=None)
  pc.precompute(lambda images: np.zeros((len(images), 12), np.float32), old, augment,
                str(tmp_path / "logits"), teacher={"name": "t"}, batch_size=4,
                log=lambda _: None)
  config_glue.open_teacher_logits(str(tmp_path / "logits"), old)
  with pytest.raises(TeacherLogitsError, match="label 2 is 10 there and 2 in the data"):
    config_glue.open_teacher_logits(str(tmp_path / "logits"), new)
  # Shards are reused only by the same run: another class order is refused, not mixed in.
  with pytest.raises(TeacherLogitsError, match="another run .its class_names differ"):
    pc.precompute(None, new, augment, str(tmp_path / "logits"), teacher={"name": "t"},
                  batch_size=4, log=lambda _: None)
