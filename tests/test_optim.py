"""The DeiT recipe's optimizer pieces: no-decay set and warm-up + cosine schedule."""

import jax
import numpy as np
import pytest
from flax import nnx

from deit_jax import optim
from deit_jax.models import create_model


def test_weight_decay_on_kernels_and_dist_token():
  """The official no-decay set: biases, norms, pos_embed and cls_token (timm 0.3.2's
  VisionTransformer.no_weight_decay, which the official distilled model inherits)."""
  model = create_model("deit_tiny_distilled_patch16_224", depth=2)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))

  def decayed(**kwargs):
    mask = optim.weight_decay_mask(params, **kwargs)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    return sorted(k for k, v in flat.items() if v)

  official = decayed()
  assert "['blocks'][0]['attn']['qkv_kernel']" in official
  assert "['head_dist']['kernel']" in official
  assert "['dist_token']" in official
  for name in ("qkv_bias", "proj_bias", "pos_embed", "cls_token", "scale", "['bias']"):
    assert not any(name in k for k in official), name
  assert len(official) == 2 * 4 + 3 + 1  # per block qkv/proj/fc1/fc2; patch embed, 2 heads
  assert decayed(decay_dist_token=False) == [k for k in official if k != "['dist_token']"]


def test_epoch_schedule_is_timm_cosine_stepped_after_each_epoch():
  """Epoch k trains at timm's value for epoch k - 1 (epoch 0 at the warm-up start)."""
  schedule = optim.epoch_cosine(1e-3, steps_per_epoch=10, epochs=300, warmup_epochs=5)
  lr = lambda epoch: float(schedule(epoch * 10 + 3))
  assert lr(0) == lr(1) == pytest.approx(1e-6)
  assert lr(2) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 5, rel=1e-5)
  assert lr(6) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + np.cos(np.pi * 5 / 300)),
                                rel=1e-5)  # the cosine counts from epoch 0
  assert float(schedule(10 * 10 - 1)) == float(schedule(10 * 9))  # constant within an epoch
  assert lr(301) == pytest.approx(1e-5)


def test_warmup_cosine_endpoints():
  schedule = optim.warmup_cosine(5e-4, total_steps=1000, warmup_steps=50)
  assert float(schedule(0)) == pytest.approx(1e-6, rel=1e-4)
  assert float(schedule(50)) == pytest.approx(5e-4, rel=1e-5)
  assert float(schedule(1000)) == pytest.approx(1e-5, rel=1e-4)
  values = np.array([float(schedule(s)) for s in range(50, 1001, 50)])
  assert np.all(np.diff(values) < 0)


def test_sgd_matches_pytorch_nesterov_with_coupled_weight_decay():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
            "bias": rng.normal(size=(3,)).astype(np.float32)}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
           for _ in range(3)]
  tx = optim.sgd(lambda step: 0.1, params, weight_decay=0.01, momentum=0.9)
  state, ours = tx.init(params), dict(params)
  for g in grads:
    updates, state = tx.update(g, state, ours)
    ours = jax.tree.map(lambda p, u: p + u, ours, updates)
  kernel, bias = (torch.tensor(params[k]).requires_grad_() for k in ("kernel", "bias"))
  reference = torch.optim.SGD([{"params": [kernel], "weight_decay": 0.01},
                               {"params": [bias], "weight_decay": 0.0}],
                              lr=0.1, momentum=0.9, nesterov=True)
  for g in grads:
    kernel.grad, bias.grad = torch.tensor(g["kernel"]), torch.tensor(g["bias"])
    reference.step()
  np.testing.assert_allclose(ours["kernel"], kernel.detach().numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ours["bias"], bias.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_warmup_steps_zero_means_none_and_minus_one_means_epochs():
  from ml_collections import ConfigDict

  from deit_jax import builder
  opt = lambda steps: ConfigDict({"warmup_steps": steps, "warmup_epochs": 5.0})  # noqa: E731
  assert builder.warmup_steps(opt(0), steps_per_epoch=100) == 0
  assert builder.warmup_steps(opt(7), steps_per_epoch=100) == 7
  assert builder.warmup_steps(opt(-1), steps_per_epoch=100) == 500
  assert builder.warmup_steps(ConfigDict({"warmup_steps": None, "warmup_epochs": 0.5}),
                              steps_per_epoch=100) == 50

