"""RegNetY: timm's architecture (widths, depths, parameter counts of every name), logical
axis names, BatchNorm in train and eval mode, bf16. Weight import and logits parity with
timm are in test_convert.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import require
from deit_jax.models import LOGICAL_AXES, create_model, list_models
from deit_jax.models.regnet import regnet_stages
from deit_jax.sharding import RULES

REGNETS = [n for n in list_models() if n.startswith("regnety_")]
TINY = dict(num_classes=10, in_chans=1)  # regnety_002 for 28x28 grey images


def _timm_on_meta(name):
  """timm's model without memory or init cost (parameters on the meta device)."""
  torch, timm = require("torch"), require("timm")
  with torch.device("meta"):
    return timm.create_model(name)


@pytest.mark.parametrize("name", REGNETS)
def test_architecture_equals_timm(name):
  reference = _timm_on_meta(name)
  ours = nnx.eval_shape(lambda: create_model(name))
  assert (sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
          == sum(p.numel() for p in reference.parameters()))
  conv2 = lambda stage: stage.b1.conv2.conv
  theirs = [(len(list(stage.children())), conv2(stage).out_channels,
             conv2(stage).out_channels // conv2(stage).groups, stage.b1.se.fc1.out_channels)
            for stage in (reference.s1, reference.s2, reference.s3, reference.s4)]
  assert [(len(stage), stage[0].conv2.conv.out_features,
           stage[0].conv2.conv.kernel.shape[2], stage[0].se.fc1.out_features)
          for stage in ours.stages] == theirs


def test_stage_rule_matches_timm_generator():
  timm_regnet = require("timm").models.regnet
  for w0, wa, wm, depth, group in [(200, 106.23, 2.48, 18, 112), (24, 36.44, 2.49, 13, 8),
                                   (48, 20.71, 2.65, 27, 24), (32, 17.5, 2.1, 19, 16)]:
    widths, _, groups = timm_regnet.generate_regnet(wa, w0, wm, depth, group)
    stage_widths, stage_depths = np.unique(widths, return_counts=True)
    widths, groups = timm_regnet.adjust_widths_groups_comp(
        stage_widths.tolist(), [1.0] * len(stage_widths), groups)
    assert regnet_stages(w0, wa, wm, depth, group) == list(
        zip(widths, stage_depths.tolist(), groups))


def test_every_parameter_has_logical_axis_names():
  model = nnx.eval_shape(lambda: create_model("regnety_160"))
  rules = dict(RULES)
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == len(var.shape), (path, names, var.shape)
    assert all(n is None or (n in LOGICAL_AXES and n in rules) for n in names), (path, names)
  assert model.stages[3][0].conv2.conv.kernel.get_metadata()["out_sharding"] == (
      None, None, None, "channels")


_forward = nnx.jit(lambda model, x: model(x))  # eager op-by-op dispatch is slow on CPU


def test_batchnorm_trains_statistics_and_eval_uses_them():
  model = create_model("regnety_002", **TINY)
  x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1)) * 3 + 1
  model.eval()
  before = _forward(model, x)
  model.train()
  _forward(model, x)  # one batch moves the running averages (momentum 0.9)
  mean = model.stem.bn.mean[...]
  assert float(jnp.abs(mean).max()) > 0
  model.eval()
  after = _forward(model, x)
  assert not np.allclose(before, after)
  np.testing.assert_array_equal(after, _forward(model, x))  # eval: statistics stay fixed
  np.testing.assert_array_equal(mean, model.stem.bn.mean[...])


def test_bf16_compute_on_fp32_and_bf16_parameters():
  reference = create_model("regnety_002", **TINY)
  # A positive head: logits are sums of positive terms, so their relative error is bf16's
  # and not magnified by cancellation.
  reference.head.kernel[...] = jnp.abs(reference.head.kernel[...])
  reference.eval()
  params, stats = nnx.state(reference, nnx.Param), nnx.state(reference, nnx.BatchStat)
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  expected = _forward(reference, x)
  for param_dtype in ("float32", "bfloat16"):
    model = create_model("regnety_002", **TINY, dtype="bfloat16", param_dtype=param_dtype)
    nnx.update(model, jax.tree.map(lambda v: v.astype(param_dtype), params), stats)
    model.eval()
    assert model.head.kernel.dtype == jnp.dtype(param_dtype)
    got = _forward(model, x)
    assert got.dtype == jnp.float32
    rel = float(jnp.abs(got - expected).max() / jnp.abs(expected).max())
    assert rel < 0.03, rel


def test_bad_config_is_named():
  with pytest.raises(ValueError, match="w0 a multiple of 8"):
    create_model("regnety_002", w0=20)
  with pytest.raises(ValueError, match="give 2 stages; a RegNet has 4"):
    create_model("regnety_002", depth=2)
