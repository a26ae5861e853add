"""Weight import: timm parity for every registered name, adaptation, refusal of bad input."""

import pickle
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import require
from deit_jax import checkpoint, convert
from deit_jax.models import create_model, list_models

torch = require("torch")
timm = require("timm")
safetensors_torch = require("safetensors.torch")

PARITY_ATOL = 1e-4


def _perturbed_timm_model(name, seed=0, **kwargs):
  """Random timm model with every weight moved off its init (zero biases, unit norms)."""
  model = timm.create_model(name, pretrained=False, **kwargs)
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=gen) * 0.02)
  return model


def _flat_params(model):
  return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _torch_logits(model, x):
  with torch.no_grad():
    out = model(torch.from_numpy(x).permute(0, 3, 1, 2))
  return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()


# In every run: the smallest plain and distilled models. The other DeiTs differ only in
# width, depth and (384) the position-embedding grid, whose layout tests/test_export.py
# checks against timm in every run (base/384 names at a small width); here they are slow
# (DeiT-B/384 at full size, saved, loaded and run twice: ~30 s).
FAST_PARITY = ("deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224")


@pytest.mark.parametrize("name", [n if n in FAST_PARITY else pytest.param(n, marks=pytest.mark.slow)
                                  for n in list_models() if n.startswith("deit_")])
def test_parity_with_timm(name, tmp_path):
  reference = _perturbed_timm_model(name)
  state_dict = reference.state_dict()
  pth, st = tmp_path / "weights.pth", tmp_path / "weights.safetensors"
  torch.save({"model": state_dict, "epoch": 299}, pth)  # official checkpoint layout
  safetensors_torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, st)

  ours = convert.load_torch_checkpoint(pth, name)
  from_st = convert.load_torch_checkpoint(st, name)
  a, b = _flat_params(ours), _flat_params(from_st)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))

  size = ours.config.img_size
  x = np.random.RandomState(1).randn(2, size, size, 3).astype(np.float32)
  reference.eval()
  ours.eval()
  expected, got = _torch_logits(reference, x), np.asarray(ours(jnp.asarray(x)))
  err = np.abs(got - expected).max()
  print(f"{name}: eval max|diff| {err:.2e}")
  assert err <= PARITY_ATOL
  np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))

  if ours.config.distilled:
    reference.train()
    reference.set_distilled_training(True)
    ours.train()
    expected_pair, got_pair = _torch_logits(reference, x), ours(jnp.asarray(x))
    for e, g in zip(expected_pair, got_pair):
      assert np.abs(np.asarray(g) - e).max() <= PARITY_ATOL
      np.testing.assert_array_equal(np.asarray(g).argmax(-1), e.argmax(-1))


def _tiny_state_dict(tmp_path, **kwargs):
  reference = _perturbed_timm_model("deit_tiny_distilled_patch16_224", **kwargs)
  path = tmp_path / "tiny.pth"
  torch.save(reference.state_dict(), path)
  return reference, path


def test_new_class_count_reinitialises_heads(tmp_path, caplog):
  reference, path = _tiny_state_dict(tmp_path)
  model = convert.load_torch_checkpoint(path, "deit_tiny_distilled_patch16_224",
                                        num_classes=10, seed=7)
  fresh = create_model("deit_tiny_distilled_patch16_224", num_classes=10, seed=7)
  np.testing.assert_array_equal(model.head.kernel[...], fresh.head.kernel[...])
  np.testing.assert_array_equal(model.head_dist.kernel[...], fresh.head_dist.kernel[...])
  np.testing.assert_array_equal(model.cls_token[...],
                                reference.cls_token.detach().numpy())
  notes = convert.apply_state_dict(fresh, {k: v.numpy() for k, v in
                                           reference.state_dict().items()})
  assert any("1000 classes" in n and "freshly initialised" in n for n in notes)


def test_pos_embed_resampling_matches_official_finetune_code():
  functional = torch.nn.functional
  rng = np.random.RandomState(0)
  for old, new in [(14, 24), (14, 7), (5, 9)]:
    pos = rng.randn(1, 2 + old * old, 8).astype(np.float32)
    ours = convert.resample_pos_embed(pos, 2, new)
    # facebookresearch/deit main.py: interpolate(bicubic, align_corners=False) on the grid.
    grid = torch.from_numpy(pos[:, 2:]).reshape(1, old, old, 8).permute(0, 3, 1, 2)
    grid = functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    expected = np.concatenate([pos[:, :2], grid.permute(0, 2, 3, 1).reshape(1, -1, 8).numpy()],
                              axis=1)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_new_resolution_resamples_pos_embed(tmp_path):
  reference, path = _tiny_state_dict(tmp_path)
  model = convert.load_torch_checkpoint(path, "deit_tiny_distilled_patch16_224", img_size=288)
  assert model.pos_embed.shape == (1, 18 * 18 + 2, 192)
  np.testing.assert_array_equal(model.pos_embed[...][:, :2],
                                reference.pos_embed.detach().numpy()[:, :2])
  model.eval()
  assert model(jnp.zeros((1, 288, 288, 3))).shape == (1, 1000)


def test_mismatches_are_listed_in_one_error(tmp_path):
  reference = _perturbed_timm_model("deit_tiny_distilled_patch16_224")
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  del state["blocks.3.mlp.fc1.bias"]
  state["blocks.12.norm1.weight"] = np.ones(192, np.float32)
  state["blocks.0.attn.proj.weight"] = np.ones((192, 100), np.float32)
  with pytest.raises(convert.ConversionError) as info:
    convert.apply_state_dict(create_model("deit_tiny_distilled_patch16_224"), state)
  message = str(info.value)
  assert "missing keys (1): blocks.3.mlp.fc1.bias" in message
  assert "unexpected keys (1): blocks.12.norm1.weight" in message
  assert "blocks.0.attn.proj.weight: checkpoint (192, 100)" in message


def test_plain_checkpoint_into_distilled_model_is_refused(tmp_path):
  reference = _perturbed_timm_model("deit_tiny_patch16_224")
  path = tmp_path / "plain.safetensors"
  safetensors_torch.save_file(reference.state_dict(), path)
  with pytest.raises(convert.ConversionError, match="missing keys.*dist_token"):
    convert.load_torch_checkpoint(path, "deit_tiny_distilled_patch16_224")


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  with open(path, "wb") as f:
    pickle.dump({"model": _Exploit(marker)}, f)
  torch.save({"model": {"x": torch.zeros(1)}, "payload": _Exploit(marker)}, tmp_path / "e2.pth")
  for p in (path, tmp_path / "e2.pth"):
    with pytest.raises(convert.ConversionError, match="refusing to load") as info:
      convert.read_state_dict(p)
    # One short sentence (what, why, what to do), not PyTorch's paragraph.
    message = str(info.value)
    assert "arbitrary code" in message and ".safetensors" in message and "\n" not in message
    assert len(message) - len(str(p)) < 250 and "weights_only" not in message
  assert not marker.exists()


def test_missing_and_garbage_files(tmp_path):
  with pytest.raises(convert.ConversionError, match="weights file not found"):
    convert.read_state_dict(tmp_path / "nope.pth")
  garbage = tmp_path / "garbage.safetensors"
  garbage.write_bytes(b"\x00" * 64)
  with pytest.raises(convert.ConversionError, match="not a readable safetensors file"):
    convert.read_state_dict(garbage)


def test_cli_writes_checkpoint_that_restores(tmp_path, capsys):
  reference, path = _tiny_state_dict(tmp_path)
  out = tmp_path / "converted"
  args = [str(path), "--model", "deit_tiny_distilled_patch16_224", "--out", str(out),
          "--num_classes", "10"]
  assert convert.main(args) == 0
  assert "wrote deit_tiny_distilled_patch16_224" in capsys.readouterr().out
  restored = checkpoint.load_model(out)
  direct = convert.load_torch_checkpoint(path, "deit_tiny_distilled_patch16_224",
                                         num_classes=10)
  a, b = _flat_params(restored), _flat_params(direct)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
  assert checkpoint.read_metadata(out)["overrides"] == {"num_classes": 10}

  # An existing output is never clobbered by accident.
  assert convert.main(args) == 2
  assert "already exists" in capsys.readouterr().err
  assert convert.main(args + ["--overwrite"]) == 0


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
  assert convert.main([str(tmp_path / "missing.pth"), "--model", "deit_tiny_patch16_224",
                       "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: weights file not found") and "\n" not in err
  assert not (tmp_path / "o").exists()


def test_incomplete_model_directory_is_refused(tmp_path):
  (tmp_path / "params").mkdir()
  with pytest.raises(FileNotFoundError, match="incomplete save"):
    checkpoint.load_model(tmp_path)


def test_half_precision_safetensors_convert(tmp_path):
  reference = _perturbed_timm_model("deit_tiny_patch16_224")
  path = tmp_path / "bf16.safetensors"
  safetensors_torch.save_file({k: v.bfloat16() for k, v in reference.state_dict().items()},
                              path)
  model = convert.load_torch_checkpoint(path, "deit_tiny_patch16_224")
  assert model.cls_token.dtype == jnp.float32
  np.testing.assert_array_equal(model.cls_token[...],
                                reference.cls_token.detach().bfloat16().float().numpy())


# ---------------------------------------------------------------------------
# RegNetY (the DeiT teacher)
# ---------------------------------------------------------------------------



def _perturbed_regnet(name, seed=0, **kwargs):
  """_perturbed_timm_model plus BatchNorm moved off identity: scales in [0.5, 1] (the last BN
  of each block starts at 0 in timm), running means and variances random."""
  model = _perturbed_timm_model(name, seed, **kwargs)
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.0, generator=gen)
        module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
        module.running_var.uniform_(0.5, 1.5, generator=gen)
  return model.eval()


@pytest.mark.parametrize("name", ["regnety_002"] + [
    pytest.param(n, marks=pytest.mark.slow) for n in ("regnety_040", "regnety_080", "regnety_160")])
def test_regnet_parity_with_timm(name, tmp_path):
  reference = _perturbed_regnet(name)
  path = tmp_path / "teacher.pth"
  torch.save({"model": reference.state_dict()}, path)  # the official DeiT teacher layout
  ours = convert.load_torch_checkpoint(path, name)
  ours.eval()
  x = np.random.RandomState(1).randn(2, 224, 224, 3).astype(np.float32)
  expected = _torch_logits(reference, x)
  got = np.asarray(nnx.jit(lambda m, v: m(v))(ours, jnp.asarray(x)))
  err = np.abs(got - expected).max()
  print(f"{name}: eval max|diff| {err:.2e} (max|logit| {np.abs(expected).max():.2f})")
  assert err <= PARITY_ATOL
  np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
  bn = reference.s2.b1.conv2.bn
  np.testing.assert_array_equal(ours.stages[1][0].conv2.bn.var[...], bn.running_var.numpy())


def test_regnet_cli_round_trip_keeps_batch_statistics(tmp_path, capsys):
  """A grey-image, 10-class teacher from a .safetensors file, through the CLI and back."""
  reference = _perturbed_regnet("regnety_002", num_classes=10, in_chans=1)
  path = tmp_path / "teacher.safetensors"
  safetensors_torch.save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
                              path)
  out = tmp_path / "teacher"
  assert convert.main([str(path), "--model", "regnety_002", "--out", str(out),
                       "--num_classes", "10", "--in_chans", "1"]) == 0
  count = sum(p.numel() for p in reference.parameters())
  assert f"wrote regnety_002 ({count:,} parameters)" in capsys.readouterr().out
  model, _ = checkpoint.load_trained_model(out)
  x = np.random.RandomState(2).randn(3, 64, 64, 1).astype(np.float32)
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(x))), _torch_logits(reference, x),
                             atol=PARITY_ATOL)


@pytest.mark.parametrize("model_args, message", [
    (["--model", "regnety_004"],
     r"stage \(width, blocks\) \[\(24, 1\), \(56, 1\), \(152, 4\), \(368, 7\)\] \(that is "
     r"regnety_002\); the model has \[\(48, 1\), \(104, 3\), \(208, 6\), \(440, 6\)\]"),
    (["--model", "regnety_002", "--num_classes", "10"],
     "the weights have num_classes=1000, the model 10"),
    (["--model", "deit_tiny_patch16_224"], "missing keys .*unexpected keys"),
])
def test_regnet_weights_that_do_not_fit_are_one_line(tmp_path, capsys, model_args, message):
  path = tmp_path / "regnety_002.pth"
  torch.save(timm.create_model("regnety_002").state_dict(), path)
  out = tmp_path / "out"
  assert convert.main([str(path), "--out", str(out), *model_args]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err
  assert re.search(message, err), err
  assert not out.exists()
