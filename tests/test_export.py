"""Export to timm: our checkpoints load into timm with strict=True and give our logits."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import require
from deit_jax import checkpoint, export
from deit_jax.models import create_model

torch = require("torch")
timm = require("timm")
safetensors_numpy = require("safetensors.numpy")

PARITY_ATOL = 1e-4
SMALL = dict(embed_dim=32, depth=2, num_heads=2, num_classes=7)


def _perturbed(name, seed=0, **overrides):
  """Our model with every parameter moved off its init (biases and norms included)."""
  model = create_model(name, seed=seed, **overrides)
  state = nnx.state(model, nnx.Param)
  keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(state))))
  nnx.update(model, jax.tree.map(lambda p: p + 0.02 * jax.random.normal(next(keys), p.shape),
                                 state))
  model.eval()
  return model


def _load(path):
  if str(path).endswith(".safetensors"):
    return {k: torch.from_numpy(v) for k, v in safetensors_numpy.load_file(path).items()}
  return torch.load(path, map_location="cpu", weights_only=True)


def _assert_timm_matches(model, name, kwargs, path):
  reference = timm.create_model(name, pretrained=False, **kwargs)
  reference.load_state_dict(_load(path), strict=True)
  reference.eval()
  size, chans = model.config.img_size, model.config.in_chans
  x = np.random.RandomState(0).randn(2, size, size, chans).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(model(jnp.asarray(x)))
  err = float(np.abs(got - expected).max())
  print(f"{name} {kwargs}: max|diff| {err:.2e}")
  assert err <= PARITY_ATOL
  return err


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
                                  "deit_base_patch16_384", "deit_base_distilled_patch16_384"])
def test_model_directory_exports_to_timm(name, tmp_path):
  model = _perturbed(name, **SMALL)
  checkpoint.save_model(tmp_path / "model", model, name=name, overrides=SMALL)
  for suffix in (".safetensors", ".pth"):
    out = str(tmp_path / f"weights{suffix}")
    timm_name, kwargs = export.export(str(tmp_path / "model"), out)
    assert timm_name == name and kwargs == {"num_classes": 7, "embed_dim": 32, "depth": 2,
                                            "num_heads": 2}
    _assert_timm_matches(model, name, kwargs, out)


def test_regnet_with_batchnorm_statistics_exports_to_timm(tmp_path):
  """RegNetY: BatchNorm running statistics (perturbed too) go out under timm's buffer names."""
  name, overrides = "regnety_002", dict(num_classes=7, img_size=64)
  model = _perturbed(name, **overrides)
  stats = nnx.state(model, nnx.BatchStat)
  keys = iter(jax.random.split(jax.random.key(5), len(jax.tree.leaves(stats))))
  nnx.update(model, jax.tree.map(lambda s: s + 0.1 * jnp.abs(jax.random.normal(next(keys),
                                                                               s.shape)), stats))
  checkpoint.save_model(tmp_path / "model", model, name=name, overrides=overrides)
  timm_name, kwargs = export.export(str(tmp_path / "model"), str(tmp_path / "w.safetensors"))
  assert timm_name == name and kwargs == {"num_classes": 7}
  _assert_timm_matches(model, name, kwargs, tmp_path / "w.safetensors")


def test_training_checkpoint_exports_raw_and_ema_weights(tmp_path):
  from deit_jax import optim, train_step as ts
  name, overrides = "deit_tiny_distilled_patch16_224", dict(SMALL, img_size=32, patch_size=8)
  model = _perturbed(name, **overrides)
  tx = optim.adamw(optim.warmup_cosine(1e-3, 10, 1), nnx.to_pure_dict(ts.split_model(model)[1]))
  state = ts.init_state(model, tx, seed=0)
  state = state._replace(ema=jax.tree.map(lambda p: p * 0.5, state.params))
  saver = checkpoint.TrainCheckpoints(tmp_path / "run", every_steps=1, keep=1)
  saver.save(3, state, {"step": 3}, {"model": name, "model_config": overrides,
                                     "num_classes": 7, "dataset": "x"})
  saver.close()

  _, kwargs = export.export(str(tmp_path / "run"), str(tmp_path / "raw.safetensors"))
  assert kwargs == {"num_classes": 7, "img_size": 32, "patch_size": 8, "embed_dim": 32,
                    "depth": 2, "num_heads": 2}
  _assert_timm_matches(model, name, kwargs, tmp_path / "raw.safetensors")

  export.export(str(tmp_path / "run" / "checkpoints" / "3"), str(tmp_path / "ema.pth"), ema=True)
  ema_model, _ = checkpoint.load_trained_model(tmp_path / "run", ema=True)
  assert not np.allclose(ema_model.cls_token[...], model.cls_token[...])
  _assert_timm_matches(ema_model, name, kwargs, tmp_path / "ema.pth")


def test_cli_fashion_mnist_model_and_refusals(tmp_path, capsys):
  """``export.main`` as ``python -m deit_jax.export`` calls it (in this process: a process
  start costs ~8 s; tests/test_rehearsal.py runs the command itself)."""
  # The Fashion-MNIST DeiT (28x28 grayscale, patch 4) is a timm ViT given keyword arguments.
  name = "deit_tiny_patch16_224"
  overrides = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=96, depth=2, num_heads=3,
                   num_classes=10)
  model = _perturbed(name, **overrides)
  checkpoint.save_model(tmp_path / "fmnist", model, name=name, overrides=overrides)
  out = tmp_path / "fmnist.safetensors"
  code, said = export.main([str(tmp_path / "fmnist"), f"--out={out}"]), capsys.readouterr()
  assert code == 0, said.err[-2000:]
  assert ("timm.create_model('deit_tiny_patch16_224', num_classes=10, img_size=28, "
          "patch_size=4, in_chans=1, embed_dim=96, depth=2)") in said.out
  from safetensors import safe_open
  with safe_open(str(out), framework="numpy") as f:
    kwargs = json.loads(f.metadata()["timm_kwargs"])
  _assert_timm_matches(model, name, kwargs, out)

  # The CIFAR ResNets have no timm architecture: one line, exit 2, nothing written.
  resnet = create_model("cifar_resnet8", num_classes=10)
  checkpoint.save_model(tmp_path / "resnet", resnet, name="cifar_resnet8",
                        overrides={"num_classes": 10})
  bad = tmp_path / "resnet.pth"
  code, said = export.main([str(tmp_path / "resnet"), f"--out={bad}"]), capsys.readouterr()
  assert code == 2 and said.err.startswith("error:") and len(said.err.splitlines()) == 1
  assert "no timm counterpart" in said.err and not bad.exists()

  # An existing output is not overwritten; a model directory has no EMA.
  with pytest.raises(FileExistsError, match="already exists"):
    export.export(str(tmp_path / "fmnist"), str(out))
  with pytest.raises(ValueError, match="no EMA"):
    export.export(str(tmp_path / "fmnist"), str(tmp_path / "x.pth"), ema=True)
