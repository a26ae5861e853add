"""Teacher logits: stores round-trip, join by id, validation, crop-consistent replay, the
online teacher, the CNN teacher."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from deit_jax import config_glue
from deit_jax import train_step as ts
from deit_jax.data import pipeline, sources
from deit_jax.errors import ConfigError, UserError
from deit_jax.models import create_model
from deit_jax.teacher import precompute as pc
from deit_jax.teacher import store as st
from deit_jax.teacher.feed import PrecomputedTeacher


def _logits_of(ids, num_classes=10):
  """A deterministic, distinct logit row per id."""
  ids = np.asarray(ids, np.float64)[:, None]
  return (np.sin(ids * 0.37 + np.arange(num_classes) * 1.3) * 4).astype(np.float32)


def _write_store(path, n, num_classes=10, storage="full", k=3, missing=(), **manifest):
  path.mkdir(parents=True, exist_ok=True)
  ids = np.array([i for i in range(n) if i not in set(missing)])
  for chunk in np.array_split(ids, 3):
    st.write_shard(str(path), chunk, st.compress(_logits_of(chunk, num_classes), storage, k))
  names = sorted(p.name for p in path.iterdir() if p.name.startswith("logits-"))
  st.write_manifest(str(path), {"dataset": "fashion_mnist", "split": "test", "num_examples": n,
                                "num_classes": num_classes, "storage": storage, "k": k,
                                "views": 0, "teacher": {"name": "t"}, "shards": names,
                                **manifest})


@pytest.mark.parametrize("storage", ["full", "topk"])
def test_store_round_trip(tmp_path, storage):
  _write_store(tmp_path, 50, storage=storage, k=3)
  logits = st.TeacherLogits(str(tmp_path))
  ids = np.array([7, 0, 49, 7, 23])
  dense, exact = logits.lookup(ids), _logits_of(ids)
  np.testing.assert_array_equal(dense.argmax(-1), exact.argmax(-1))
  if storage == "full":
    np.testing.assert_allclose(dense, exact, atol=4e-3)  # fp16
    assert logits.bytes_per_example() == 10 * 2
  else:
    top = np.argsort(-exact, -1)[:, :3]
    np.testing.assert_allclose(np.take_along_axis(dense, top, -1),
                               np.take_along_axis(exact, top, -1), atol=4e-3)
    # The mass outside the top k is kept exactly (at T=1), spread evenly.
    p_dense, p_exact = jax.nn.softmax(dense), jax.nn.softmax(exact)
    outside = lambda p: 1 - np.take_along_axis(np.asarray(p), top, -1).sum(-1)
    np.testing.assert_allclose(outside(p_dense), outside(p_exact), atol=2e-3)
    assert logits.bytes_per_example() == 3 * 2 + 3 * 2 + 2  # uint16 + fp16 values + fill


def test_validation_names_mismatch_and_missing_ids(tmp_path):
  _write_store(tmp_path / "a", 50, missing=(3, 4, 40))
  logits = st.TeacherLogits(str(tmp_path / "a"))
  assert logits.missing == 3
  with pytest.raises(st.TeacherLogitsError, match="miss 3 of 50 examples .first missing id 3"):
    logits.validate(dataset="fashion_mnist", split="test", num_examples=50, num_classes=10)
  _write_store(tmp_path / "b", 50)
  with pytest.raises(st.TeacherLogitsError, match="split: logits 'test' vs run 'train'; "
                     "num_examples: logits 50 vs run 60000"):
    st.TeacherLogits(str(tmp_path / "b")).validate(dataset="fashion_mnist", split="train",
                                                   num_examples=60000, num_classes=10)
  with pytest.raises(st.TeacherLogitsError, match="no manifest.json"):
    st.TeacherLogits(str(tmp_path))


def test_join_by_id_under_shuffling_and_two_processes(fmnist_data_dir, tmp_path):
  source = sources.open_source("fashion_mnist", "test", data_dir=fmnist_data_dir)
  _write_store(tmp_path, source.num_examples, storage="topk", k=10)
  logits = st.TeacherLogits(str(tmp_path))
  logits.validate(dataset="fashion_mnist", split="test", num_examples=10000, num_classes=10)
  config = pipeline.AugmentConfig(image_size=28, crop="pad_crop", pad=2, randaugment=None,
                                  random_erasing=0.0, in_chans=1, mean=(0.5,), std=(0.5,),
                                  repeated_aug=2)
  global_ids = {}
  for p in range(2):
    it = pipeline.TrainIterator(source, config, pipeline.HostSlice(32, p, 2), seed=3,
                                start_step=5)
    for step in range(3):
      batch = next(it)
      np.testing.assert_allclose(logits.lookup(batch["id"]), _logits_of(batch["id"]),
                                 atol=4e-3)
      global_ids.setdefault(step, []).append(batch["id"])
  single = pipeline.TrainIterator(source, config, pipeline.HostSlice(32), seed=3, start_step=5)
  for step in range(3):
    np.testing.assert_array_equal(np.concatenate(global_ids[step]), next(single)["id"])


@pytest.mark.parametrize("in_memory_limit_bytes", [sources.IN_MEMORY_LIMIT_BYTES, 0],
                         ids=["in_memory", "random_access"])  # the latter: batched reads
def test_crop_consistent_views_replay_exactly(fmnist_data_dir, tmp_path, in_memory_limit_bytes):
  source = sources.open_source("fashion_mnist", "test", data_dir=fmnist_data_dir,
                               in_memory_limit_bytes=in_memory_limit_bytes)
  source.num_examples = 40  # the first 40 ids
  config = pipeline.AugmentConfig(image_size=28, crop="pad_crop", pad=2, randaugment=None,
                                  random_erasing=0.0, in_chans=1, mean=(0.5,), std=(0.5,),
                                  repeated_aug=1)
  seen = []

  def recording_teacher(images):
    seen.append(images.copy())
    return np.tile(images.reshape(len(images), -1).sum(-1, keepdims=True), (1, 10))

  pc.precompute(recording_teacher, source, config, str(tmp_path), teacher={"name": "rec"},
                views=3, view_seed=5, batch_size=16, shard_size=25, log=lambda _: None)
  logits = st.TeacherLogits(str(tmp_path))
  teacher_images = np.concatenate(seen).reshape(40, 3, 28, 28, 1)
  views = logits.views
  assert views.shape == (40, 3, 5) and len(np.unique(views.reshape(-1, 5), axis=0)) > 20
  it = pipeline.TrainIterator(source, config, pipeline.HostSlice(20), seed=1, views=views)
  chosen = []
  for _ in range(4):
    batch = next(it)
    for image, i, v in zip(batch["image"], batch["id"], batch["view"]):
      np.testing.assert_array_equal(image, teacher_images[i, v])  # the very same crop
      chosen.append(v)
    np.testing.assert_allclose(logits.lookup(batch["id"], batch["view"])[:, 0],
                               teacher_images[batch["id"], batch["view"]].sum((1, 2, 3)),
                               rtol=1e-3)
  assert set(chosen) == {0, 1, 2}

  # A run whose crop geometry differs from the views' is refused in one line before any step.
  distill = ml_collections.ConfigDict({"type": "soft", "teacher_logits": str(tmp_path),
                                       "teacher": ""})
  run = ml_collections.ConfigDict({"distill": distill})
  assert isinstance(config_glue.make_teacher(run, source, config, None), PrecomputedTeacher)
  with pytest.raises(UserError, match=r"another crop geometry \(pad: logits 2 vs run 4\)"):
    config_glue.make_teacher(run, source, dataclasses.replace(config, pad=4), None)


def _tiny_setup(distill="hard", student="deit_tiny_distilled_patch16_224"):
  model = create_model(student, img_size=16, patch_size=8,
                       in_chans=1, embed_dim=16, depth=1, num_heads=2, num_classes=10)
  teacher = create_model("cifar_resnet8", img_size=16, in_chans=1, num_classes=10, seed=4)
  tx = optax.adamw(1e-3)
  state = ts.init_state(model, tx, seed=0, ema=False)
  loss_config = ts.LossConfig(10, distill, 0.5, 1.0)
  return model, teacher, tx, state, loss_config


@pytest.mark.parametrize("student", ["deit_tiny_distilled_patch16_224",
                                     "deit_tiny_patch16_224"])  # class token only
def test_online_teacher_gets_no_gradient_and_matches_precomputed(student):
  model, teacher, tx, state, loss_config = _tiny_setup(student=student)
  teacher.eval()
  images = jax.random.normal(jax.random.key(0), (8, 16, 16, 1))
  labels = jnp.arange(8) % 10
  tdef = ts.ModelDef.of(teacher)
  _, tparams, trest = ts.split_model(teacher)
  tstate = (nnx.to_pure_dict(tparams), nnx.to_pure_dict(trest))
  # Jitted: eager dispatch of a whole train step (and its gradient) is minutes on CPU.
  online = jax.jit(ts.make_train_step(ts.ModelDef.of(model), tx, lambda s: 1e-3, loss_config,
                                      None, ema_decay=0.0, teacher_def=tdef))
  offline = jax.jit(ts.make_train_step(ts.ModelDef.of(model), tx, lambda s: 1e-3, loss_config,
                                       None, ema_decay=0.0))
  batch = {"image": images, "label": labels}
  _, m_online = online(state, batch, tstate)
  _, m_offline = offline(state, {**batch, "teacher_logits": teacher(images)})
  np.testing.assert_allclose(m_online["train_loss"], m_offline["train_loss"], rtol=1e-6)
  assert float(m_online["loss_distill"]) > 0
  grads = jax.grad(lambda p: online(state, batch, (p, tstate[1]))[1]["train_loss"])(tstate[0])
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_cnn_teacher_trains_and_keeps_batch_statistics():
  model = create_model("cifar_resnet8", img_size=16, in_chans=1, num_classes=10)
  tx = optax.adam(3e-3)
  state = ts.init_state(model, tx, seed=0, ema=False)
  step = jax.jit(ts.make_train_step(ts.ModelDef.of(model), tx, lambda s: 3e-3,
                                    ts.LossConfig(10, "none", label_smoothing=0.0), None,
                                    ema_decay=0.0))
  key = jax.random.key(1)
  labels = jnp.arange(32) % 10
  images = jax.random.normal(key, (32, 16, 16, 1)) * 0.3 + labels[:, None, None, None] / 5
  first_mean = jax.tree.leaves(state.rest)
  losses = []
  for _ in range(50):
    state, metrics = step(state, {"image": images, "label": labels})
    losses.append(float(metrics["train_loss"]))
  assert losses[-1] < 0.3 * losses[0], losses
  moved = [float(jnp.abs(a - b).max()) for a, b in zip(first_mean, jax.tree.leaves(state.rest))
           if a.dtype == jnp.float32]
  assert moved and max(moved) > 0.01  # BatchNorm running statistics are in the state
  trained = ts.ModelDef.of(model).merge(state.params, state.rest)
  trained.eval()
  accuracy = float(jnp.mean(jnp.argmax(trained(images), -1) == labels))
  assert accuracy == 1.0  # eval mode (running averages) fits the batch too


def test_resnet_configs():
  assert sum(x.size for x in jax.tree.leaves(nnx.state(create_model("cifar_resnet20"),
                                                       nnx.Param))) == 272_474  # He et al.
  with pytest.raises(ValueError, match="depth must be 6n"):
    create_model("cifar_resnet20", depth=21)


def test_unknown_checkpoint_path_is_named(tmp_path):
  from deit_jax import checkpoint
  with pytest.raises(FileNotFoundError, match="neither a training workdir"):
    checkpoint.load_trained_model(tmp_path / "nothing")


def test_timm_teacher_loads_weights_and_matches_timm(tmp_path):
  from conftest import require
  torch, timm = require("torch"), require("timm")
  from deit_jax.teacher.torch_teacher import timm_logits_fn
  reference = timm.create_model("resnet10t", num_classes=10, in_chans=1).eval()
  torch.save(reference.state_dict(), tmp_path / "teacher.pth")
  logits_fn, info = timm_logits_fn("resnet10t", str(tmp_path / "teacher.pth"), num_classes=10,
                                   in_chans=1, device="cpu")
  images = np.random.RandomState(0).randn(3, 32, 32, 1).astype(np.float32)
  with torch.inference_mode():
    expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(logits_fn(images), expected, rtol=1e-5, atol=1e-5)
  assert info["name"] == "timm:resnet10t" and len(info["sha256"]) == 64
  with pytest.raises(ValueError, match="does not fit timm resnet10t"):
    timm_logits_fn("resnet10t", str(tmp_path / "teacher.pth"), num_classes=5, in_chans=1)


# ---------------------------------------------------------------------------
# A converted RegNetY as teacher (model directory), online and precomputed, on 4 devices
# ---------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST_AUGMENT = pipeline.AugmentConfig(image_size=28, crop="pad_crop", pad=2, randaugment=None,
                                        random_erasing=0.0, in_chans=1, mean=(0.2860,),
                                        std=(0.3530,), repeated_aug=1)


@pytest.fixture(scope="module")
def regnet_teacher_dir(tmp_path_factory):
  """A regnety_002 for 28x28 grey images and 10 classes, as ``deit_jax.convert`` writes it
  (BatchNorm statistics moved off their init so that losing them would show)."""
  from deit_jax import checkpoint
  model = create_model("regnety_002", num_classes=10, in_chans=1, seed=3)
  for _, stat in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
    stat[...] = stat[...] + 0.1
  path = tmp_path_factory.mktemp("regnet") / "teacher"
  checkpoint.save_model(path, model, name="regnety_002",
                        overrides={"num_classes": 10, "in_chans": 1})
  return path


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=900, env=env)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return out.stdout


def test_online_regnet_teacher_trains_fsdp_sharded(fmnist_data_dir, regnet_teacher_dir,
                                                    tmp_path):
  stdout = _cli("deit_jax.main", "--config=configs/fashion_mnist_deit_tiny_distilled.py",
                f"--workdir={tmp_path / 'run'}", f"--config.data_dir={fmnist_data_dir}",
                f"--config.distill.teacher={regnet_teacher_dir}",
                "--config.distill.teacher_dtype=bfloat16", "--cpu_devices=4",
                "--config.mesh.fsdp=2", "--config.model.depth=1", "--config.model.embed_dim=32",
                "--config.model.num_heads=2", "--config.batch_size=16",
                "--config.total_steps=4", "--config.log_every_steps=2",
                "--config.checkpoint_every_steps=0", "--config.eval_every_steps=-1")
  assert "'fsdp': 2" in stdout and "step 4/4" in stdout, stdout[-2000:]


def test_regnet_precompute_is_sharded_and_resumable(tmp_path):
  from deit_jax import checkpoint
  from conftest import image_folder
  dataset = image_folder(tmp_path / "images")
  out = tmp_path / "logits"
  command = ("deit_jax.teacher", "precompute", "--config=configs/fashion_mnist_deit_tiny.py",
             f"--config.dataset={dataset}", "--config.num_classes=3", "--split=test",
             f"--out={out}", "--batch_size=4", "--shard_size=5", "--cpu_devices=4")
  model = create_model("regnety_002", num_classes=3, in_chans=1, seed=5)
  checkpoint.save_model(tmp_path / "t3", model, name="regnety_002",
                        overrides={"num_classes": 3, "in_chans": 1})
  _cli(*command, f"--checkpoint={tmp_path / 't3'}")
  first = st.TeacherLogits(str(out)).lookup(np.arange(12))
  (out / st.shard_name(5, 10)).unlink()
  (out / st.MANIFEST).unlink()
  assert "reusing 2 finished shard(s)" in _cli(*command, f"--checkpoint={tmp_path / 't3'}")
  logits = st.TeacherLogits(str(out))
  np.testing.assert_array_equal(logits.lookup(np.arange(12)), first)
  assert logits.manifest["teacher"]["name"] == "regnety_002"

  # The same logits as the model run here on one device, through the eval transform.
  source = sources.open_source(dataset, "test")
  model.eval()
  logits_fn, _ = pc.jax_logits_fn(model, 4, (28, 28, 1))
  pc.precompute(logits_fn, source, FMNIST_AUGMENT, str(tmp_path / "here"),
                teacher={"name": "here"}, batch_size=4, shard_size=12, log=lambda _: None)
  np.testing.assert_allclose(st.TeacherLogits(str(tmp_path / "here")).lookup(np.arange(12)),
                             first, rtol=2e-3, atol=2e-3)
  # A re-run with every shard done computes nothing and keeps the measured throughput.
  rate = st.read_manifest(str(tmp_path / "here"))["images_per_sec"]
  again = pc.precompute(None, source, FMNIST_AUGMENT, str(tmp_path / "here"),
                        teacher={"name": "here"}, batch_size=4, shard_size=12,
                        log=lambda _: None)
  assert rate > 0 and again["images_per_sec"] == rate
  assert set(again["transform"]) == set(pipeline.EVAL_FIELDS)  # the eval transform's own fields
  assert st.read_manifest(str(tmp_path / "here"))["images_per_sec"] == rate


def test_precompute_batch_fits_the_memory_it_finds():
  """A teacher batch whose estimate exceeds the free memory runs halved (same logits, one
  line said); one that cannot fit even one image per device stops with one line. The
  estimate is the compiled program's (x CPU_PEAK_FACTOR on the host): measured for
  RegNetY-16GF, whose documented batch of 1024 needs ~100 GB there."""
  model = create_model("regnety_002", num_classes=3, in_chans=1, seed=5)
  model.eval()
  shape = (28, 28, 1)
  n = jax.local_device_count()
  need = {b: pc.bytes_needed(model, b, shape) for b in (8 * n, 4 * n)}
  assert need[8 * n] > need[4 * n] > 0
  images = np.random.RandomState(0).randn(8 * n, *shape).astype(np.float32)
  said = []
  whole, batch = pc.jax_logits_fn(model, 8 * n, shape, available=None, log=said.append)
  # room for 4n per device but not 8n: halved once, the same logits
  room = (need[4 * n] + need[8 * n]) / 2 / pc.HEADROOM
  halved, smaller = pc.jax_logits_fn(model, 8 * n, shape, available=room, log=said.append)
  assert (batch, smaller) == (8 * n, 4 * n)
  assert len(said) == 1 and f"running batches of {4 * n}" in said[0], said
  expected = whole(images)
  got = np.concatenate([halved(images[i:i + smaller]) for i in range(0, 8 * n, smaller)])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ConfigError, match=r"--config.batch_size cannot go lower"):
    pc.jax_logits_fn(model, 8 * n, shape, available=1000, log=said.append)
  # What the host reports is a positive number of bytes here (MemAvailable or the cgroup's).
  assert pc.host_available_bytes() > 0
