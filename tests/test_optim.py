"""The DeiT recipe's optimizer pieces: no-decay set and warm-up + cosine schedule."""

import jax
import numpy as np
import pytest
from flax import nnx

from deit_jax import optim
from deit_jax.models import create_model


def test_weight_decay_only_on_kernels():
  model = create_model("deit_tiny_distilled_patch16_224", depth=2)
  mask = optim.weight_decay_mask(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  decayed = sorted(k for k, v in flat.items() if v)
  assert "['blocks'][0]['attn']['qkv_kernel']" in decayed
  assert "['head_dist']['kernel']" in decayed
  for name in ("qkv_bias", "proj_bias", "pos_embed", "cls_token", "dist_token", "scale",
               "['bias']"):
    assert not any(name in k for k in decayed), name
  assert len(decayed) == 2 * 4 + 3  # per block qkv/proj/fc1/fc2; patch embed and two heads


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
