"""The paper's Table 5 test sets on miniature copies: ImageNet-ReaL (sets joined by file
name, whatever the order or the process; the empty set left out; the TFDS
``imagenet2012_real`` records), ImageNet-V2's integer class folders (by number, never string
order), and ``deit_jax.table5`` end to end against accuracies worked out by hand."""

import dataclasses
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from deit_jax import checkpoint, config_glue
from deit_jax.data import pipeline, real_labels, sources
from deit_jax.errors import DatasetError, UserError
from deit_jax.models import create_model

CLASSES = 12
# ImageNet-like validation images: (file number, class); the folders list them in class
# order (4, 1, 6, 2, 5, 3), not file order.
VAL = [(1, 3), (2, 5), (3, 7), (4, 0), (5, 5), (6, 3)]
REAL = [[3], [], [5, 7], [0], [0, 5], [5, 3]]  # real.json: entry i is file i + 1
V2_COUNTS = {5: 3, 7: 2}                         # images per V2 folder (others: 1)
AUG = dict(image_size=32, crop="rrc", crop_pct=0.875, randaugment=None)


def _jpeg(value):
  return tf.io.encode_jpeg(np.full((8, 8, 3), value, np.uint8)).numpy()


def _write_val(root):
  for number, label in VAL:
    folder = root / "val" / f"c{label:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ILSVRC2012_val_{number:08d}.JPEG").write_bytes(_jpeg(20 * number))
  for label in range(CLASSES):  # every class has a folder, as in ImageNet
    (root / "val" / f"c{label:02d}").mkdir(parents=True, exist_ok=True)


def _write_v2(root, classes=range(CLASSES)):
  for label in classes:
    folder = root / "v2" / str(label)
    folder.mkdir(parents=True)
    for i in range(V2_COUNTS.get(label, 1)):
      (folder / f"{i}.jpeg").write_bytes(_jpeg(10 * label + i))


def test_integer_class_folders_are_labelled_by_number(tmp_path):
  _write_v2(tmp_path)
  paths, labels, names = sources.list_image_folder(str(tmp_path), "v2")
  assert names == [str(k) for k in range(CLASSES)]  # string order: 0, 1, 10, 11, 2, ...
  assert [int(p.split("/")[-2]) for p in paths] == labels
  assert labels.count(5) == 3 and labels.count(10) == 1


@pytest.mark.parametrize("classes, problem", [
    ([0, 1, 2, 3, 5], "1 missing, e.g. 4"),
    ([2, 3, 4], "1 missing, e.g. 1"),
])
def test_integer_folders_that_are_not_0_to_n_minus_1_are_one_line(tmp_path, classes, problem):
  _write_v2(tmp_path, classes)
  with pytest.raises(DatasetError, match=problem) as info:
    sources.open_source(f"imagefolder:{tmp_path}", "v2")
  assert "\n" not in str(info.value) and "--config.class_order=numeric" in str(info.value)


def test_twelve_integer_folders_for_a_1000_class_config_are_refused(tmp_path):
  from configs import default
  _write_v2(tmp_path)
  config = default.get_config()
  config.dataset = f"imagefolder:{tmp_path}"
  with pytest.raises(UserError, match="config.num_classes=1000 but .* has 12 classes"):
    config_glue.open_split(config, "v2")


def test_real_sets_follow_each_example_over_two_processes(tmp_path):
  _write_val(tmp_path)
  (tmp_path / "real.json").write_text(json.dumps(REAL))
  source = sources.open_source(f"imagefolder:{tmp_path}", "val", extras=("file_name",))
  sets = real_labels.RealJson(str(tmp_path / "real.json"), CLASSES)
  seen = {}
  for process in (0, 1):
    host = pipeline.HostSlice(4, process, 2)  # 2 rows of each global batch of 4 per process
    for batch in pipeline.eval_dataset(source, pipeline.AugmentConfig(**AUG),
                                       host).as_numpy_iterator():
      rows = real_labels.RealJoin(_Keys(), sets).join(batch)["real_label"]
      for name, label, valid, row in zip(batch["file_name"], batch["label"], batch["mask"],
                                         rows):
        number = real_labels.val_number(name)
        assert label == dict(VAL)[number]
        assert sorted(np.flatnonzero(row)) == sorted(REAL[number - 1])
        if valid:
          seen[number] = seen.get(number, 0) + 1
  assert seen == {n: 1 for n, _ in VAL}  # every image once over both processes, none padded


class _Keys:
  batch_keys = ("label",)

  def join(self, batch):
    return {"label": batch["label"]}


def test_a_file_name_without_a_real_entry_is_one_line(tmp_path):
  (tmp_path / "real.json").write_text(json.dumps(REAL))
  sets = real_labels.RealJson(str(tmp_path / "real.json"), CLASSES)
  with pytest.raises(UserError, match="no entry in .* validation split only"):
    sets.rows([b"n01440764_10026.JPEG"])
  with pytest.raises(UserError, match="holds class 7 but the model predicts 5 classes"):
    real_labels.RealJson(str(tmp_path / "real.json"), 5)


class DeitRealTiny(tfds.core.GeneratorBasedBuilder):
  """The features of TFDS imagenet2012_real on the six images above (array_record)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    label = lambda: tfds.features.ClassLabel(num_classes=CLASSES)
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"), "original_label": label(),
        "real_label": tfds.features.Sequence(label()), "file_name": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"validation": self._generate_examples()}

  def _generate_examples(self):
    for number, label in VAL:
      name = f"ILSVRC2012_val_{number:08d}.JPEG"
      yield name, {"image": np.full((8, 8, 3), number, np.uint8), "original_label": label,
                   "real_label": REAL[number - 1], "file_name": name}


def test_tfds_imagenet2012_real_records_carry_their_sets(tmp_path):
  builder = DeitRealTiny(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  source = sources.from_builder(builder, "validation", extras=("real_label", "file_name"))
  assert source.num_classes == CLASSES
  for read_batch in (4, 1):  # batched reads and one record at a time
    single = pipeline.eval_dataset(
        dataclasses.replace(source, read_batch=read_batch),
        pipeline.AugmentConfig(**AUG), pipeline.HostSlice(4)).as_numpy_iterator()
    count = 0
    for batch in single:
      for name, label, row, valid in zip(batch["file_name"], batch["label"],
                                         batch["real_label"], batch["mask"]):
        number = real_labels.val_number(name)
        assert label == dict(VAL)[number] and row.dtype == np.uint8
        assert sorted(np.flatnonzero(row)) == sorted(REAL[number - 1])
        count += int(valid)
    assert count == len(VAL)


@pytest.fixture(scope="module")
def constant_model(tmp_path_factory):
  """A distilled DeiT whose heads ignore the image: cls says 3, dist says 7, their average
  5 (logits cls: 3 -> 3, 5 -> 2; dist: 7 -> 3, 5 -> 2)."""
  model = create_model("deit_tiny_distilled_patch16_224", num_classes=CLASSES, img_size=32,
                       embed_dim=16, depth=1, num_heads=2)
  for head, top in ((model.head, 3), (model.head_dist, 7)):
    head.kernel[...] = jnp.zeros_like(head.kernel[...])
    head.bias[...] = jnp.zeros(CLASSES).at[top].set(3.0).at[5].set(2.0)
  out = tmp_path_factory.mktemp("model") / "model"
  checkpoint.save_model(str(out), model, name="deit_tiny_distilled_patch16_224",
                        overrides=dict(num_classes=CLASSES, img_size=32, embed_dim=16, depth=1,
                                       num_heads=2))
  return out


def test_table5_columns_against_hand_counts(tmp_path, constant_model):
  _write_val(tmp_path)
  _write_v2(tmp_path)
  (tmp_path / "real.json").write_text(json.dumps(REAL))
  out = subprocess.run(
      [sys.executable, "-m", "deit_jax.table5", "--config=configs/default.py",
       f"--checkpoint={constant_model}", f"--real_labels={tmp_path / 'real.json'}",
       f"--v2=imagefolder:{tmp_path}", "--v2_split=v2", "--json",
       f"--config.dataset=imagefolder:{tmp_path}", "--config.eval_split=val",
       f"--config.num_classes={CLASSES}", "--config.batch_size=4",
       "--config.aug.image_size=32", "--config.aug.randaugment="],
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  row = json.loads(out.stdout.strip().splitlines()[-1])
  imagenet, v2 = row["imagenet"], row["v2"]
  # ImageNet labels 3, 5, 7, 0, 5, 3: average (5) hits 2, cls (3) 2, dist (7) 1 of 6.
  assert imagenet["num_examples"] == 6
  assert (imagenet["top1"], imagenet["top1_cls"], imagenet["top1_dist"]) == pytest.approx(
      (100 * 2 / 6, 100 * 2 / 6, 100 * 1 / 6))
  # ReaL: file 2's empty set is left out; 5 is in {5,7}, {0,5}, {5,3}; 3 in {3}, {5,3};
  # 7 in {5,7}.
  assert imagenet["num_examples_real"] == 5
  assert (row["top1_real"], imagenet["top1_real_cls"], imagenet["top1_real_dist"]) == \
      pytest.approx((60.0, 40.0, 20.0))
  # V2: 15 images, 3 in folder 5 and 2 in folder 7; string order would score 1/15 and 3/15.
  assert v2["num_examples"] == 15
  assert (row["top1_v2"], v2["top1_cls"], v2["top1_dist"]) == pytest.approx(
      (100 * 3 / 15, 100 * 1 / 15, 100 * 2 / 15))
  assert row["top1_imagenet"] == imagenet["top1"] and row["throughput"] is None
  assert "ReaL top1     60.00%" in out.stdout and "not measured" in out.stdout
  # Without ReaL labels: the columns it can, the ReaL one marked as not given.
  command = [a for a in out.args if not a.startswith("--real_labels=")]
  out = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  row = json.loads(out.stdout.strip().splitlines()[-1])
  assert row["top1_real"] is None and row["top1_v2"] == pytest.approx(100 * 3 / 15)
  assert row["top1_imagenet"] == pytest.approx(100 * 2 / 6)
  assert "ReaL top1     not given (--real_labels" in out.stdout
