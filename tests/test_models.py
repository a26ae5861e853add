"""Model registry, architecture details, train/eval convention and numerics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deit_jax.models import LOGICAL_AXES, create_model, list_models, model_config

# Parameter counts of timm's models of the same names (plain / distilled).
PARAM_COUNTS = {
    "deit_tiny_patch16_224": 5_717_416,
    "deit_tiny_distilled_patch16_224": 5_910_800,
    "deit_small_patch16_224": 22_050_664,
    "deit_small_distilled_patch16_224": 22_436_432,
    "deit_base_patch16_224": 86_567_656,
    "deit_base_distilled_patch16_224": 87_338_192,
    "deit_base_patch16_384": 86_859_496,
    "deit_base_distilled_patch16_384": 87_630_032,
}

SMALL = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=3,
             num_heads=2)


def _images(model, batch=2, seed=0):
  cfg = model.config
  return jax.random.normal(jax.random.key(seed), (batch, cfg.img_size, cfg.img_size,
                                                   cfg.in_chans))


def _param_leaves(model):
  return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_registry_has_all_timm_names():
  assert {n for n in list_models() if n.startswith("deit_")} == set(PARAM_COUNTS)
  assert {n for n in list_models() if not n.startswith("deit_")} == {
      f"cifar_resnet{d}" for d in (8, 14, 20, 32, 56)}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_counts_match_reference(name):
  model = nnx.eval_shape(lambda: create_model(name))
  assert sum(x.size for x in _param_leaves(model)) == PARAM_COUNTS[name]


def test_unknown_name_suggests_close_match():
  with pytest.raises(ValueError, match="did you mean deit_small_distilled_patch16_224"):
    create_model("deit_small_distiled_patch16_224")


def test_unknown_override_is_named():
  with pytest.raises(ValueError, match="unknown override.*'embed_dims'"):
    create_model("deit_tiny_patch16_224", embed_dims=10)


@pytest.mark.parametrize("overrides, message", [
    (dict(img_size=30, patch_size=4), "img_size 30 is not a multiple of patch_size 4"),
    (dict(embed_dim=30, num_heads=4), "embed_dim 30 is not divisible by num_heads 4"),
    (dict(drop_path_rate=1.5), "drop_path_rate must be in"),
    (dict(dtype="float77"), "dtype 'float77' is not a dtype name"),
    (dict(depth=0), "depth must be a positive integer"),
])
def test_bad_config_is_one_clear_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    create_model("deit_tiny_patch16_224", **overrides)


def test_wrong_image_shape_is_clear():
  model = create_model("deit_tiny_patch16_224", **SMALL)
  with pytest.raises(ValueError, match=r"expected images of shape \(batch, 28, 28, 1\)"):
    model(jnp.zeros((2, 1, 28, 28)))


def test_overrides_are_json_friendly():
  cfg = model_config("deit_tiny_patch16_224", dtype=jnp.bfloat16)
  assert cfg["dtype"] == "bfloat16" and cfg["embed_dim"] == 192


def test_train_eval_outputs_of_distilled_model():
  model = create_model("deit_tiny_distilled_patch16_224", **SMALL)
  x = _images(model)
  model.train()
  cls_logits, dist_logits = model(x)
  assert cls_logits.shape == dist_logits.shape == (2, 10)
  assert cls_logits.dtype == jnp.float32
  model.eval()
  avg = model(x)
  np.testing.assert_allclose(avg, (cls_logits + dist_logits) / 2, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(model(x, head="cls"), cls_logits)
  np.testing.assert_array_equal(model(x, head="dist"), dist_logits)
  both = model(x, head="both")
  assert isinstance(both, tuple) and len(both) == 2


def test_plain_model_returns_logits_in_both_modes():
  model = create_model("deit_tiny_patch16_224", **SMALL)
  x = _images(model)
  model.train()
  train_out = model(x)
  model.eval()
  np.testing.assert_array_equal(model(x), train_out)
  with pytest.raises(ValueError, match="needs a distilled model"):
    model(x, head="dist")


def test_token_layout_and_position_embedding():
  model = create_model("deit_tiny_distilled_patch16_224", **SMALL)
  assert model.pos_embed.shape == (1, 7 * 7 + 2, 32)
  plain = create_model("deit_tiny_patch16_224", **SMALL)
  assert plain.pos_embed.shape == (1, 7 * 7 + 1, 32)
  assert plain.dist_token is None and plain.head_dist is None


def test_patch_embedding_equals_strided_conv():
  model = create_model("deit_tiny_patch16_224", **{**SMALL, "in_chans": 3})
  x = _images(model)
  ours = model.patch_embed(x)
  conv = jax.lax.conv_general_dilated(
      x, model.patch_embed.kernel[...], window_strides=(4, 4), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + model.patch_embed.bias[...]
  np.testing.assert_allclose(ours, conv.reshape(2, 49, 32), atol=1e-5)


def test_initialisation_follows_official_code():
  model = create_model("deit_small_distilled_patch16_224", seed=3)
  assert abs(float(jnp.std(model.pos_embed[...])) - 0.02) < 0.001
  fc1 = model.blocks[0].mlp.fc1
  assert abs(float(jnp.std(fc1.kernel[...])) - 0.02) < 0.001
  assert float(jnp.abs(fc1.bias[...]).max()) == 0.0
  # The patch conv keeps PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  bound = 1 / np.sqrt(16 * 16 * 3)
  kernel = model.patch_embed.kernel[...]
  assert float(jnp.abs(kernel).max()) <= bound
  assert float(jnp.std(kernel)) == pytest.approx(bound / np.sqrt(3), rel=0.02)
  norm = model.blocks[5].norm2
  assert float(jnp.min(norm.scale[...])) == 1.0 and float(jnp.max(norm.bias[...])) == 0.0


def test_every_parameter_has_logical_axis_names():
  model = nnx.eval_shape(lambda: create_model("deit_base_distilled_patch16_224"))
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == len(var.shape), (path, names, var.shape)
    assert all(n is None or n in LOGICAL_AXES for n in names), (path, names)
  kernel = model.blocks[0].attn.qkv_kernel
  assert kernel.shape == (768, 3, 12, 64)
  assert kernel.get_metadata()["out_sharding"] == ("embed", "qkv", "heads", "kv")


def test_drop_path_schedule_is_linear():
  model = create_model("deit_tiny_patch16_224", **SMALL, drop_path_rate=0.2)
  rates = [b.drop_path1.rate for b in model.blocks]
  np.testing.assert_allclose(rates, [0.0, 0.1, 0.2])


def test_drop_path_and_dropout_are_identity_in_eval():
  kwargs = dict(SMALL)
  noisy = create_model("deit_tiny_distilled_patch16_224", **kwargs, drop_path_rate=0.5,
                       drop_rate=0.2, attn_drop_rate=0.2)
  clean = create_model("deit_tiny_distilled_patch16_224", **kwargs)
  x = _images(noisy)
  noisy.eval()
  clean.eval()
  np.testing.assert_array_equal(noisy(x), clean(x))
  noisy.train()
  first, second = noisy(x), noisy(x)
  assert not np.allclose(first[0], second[0])  # fresh masks each call


def test_drop_path_rescales_kept_samples():
  from deit_jax.models.vit import DropPath
  layer = DropPath(0.25, rngs=nnx.Rngs(dropout=0))
  out = np.asarray(layer(jnp.ones((20000, 3, 2))))
  per_sample = out[:, 0, 0]
  assert np.all((out == out[:, :1, :1]))  # one decision per sample
  assert set(np.unique(per_sample)) == {0.0, np.float32(1 / 0.75)}
  assert np.mean(per_sample == 0) == pytest.approx(0.25, abs=0.01)


def test_bf16_compute_with_fp32_params():
  fp32 = create_model("deit_tiny_distilled_patch16_224", **SMALL)
  bf16 = create_model("deit_tiny_distilled_patch16_224", **SMALL, dtype="bfloat16")
  assert all(p.dtype == jnp.float32 for p in _param_leaves(bf16))
  fp32.eval()
  bf16.eval()
  x = _images(fp32, batch=4)
  out = bf16(x)
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_allclose(out, fp32(x), atol=0.1)
  bf16.train()
  grads = nnx.grad(lambda m: jnp.sum(m(x)[1] ** 2))(bf16)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_bf16_params_work():
  model = create_model("deit_tiny_patch16_224", **SMALL, dtype="bfloat16",
                       param_dtype="bfloat16")
  assert all(p.dtype == jnp.bfloat16 for p in _param_leaves(model))
  assert model(_images(model)).dtype == jnp.float32


def _loss_and_grads(model, x):
  def loss(m):
    cls_logits, dist_logits = m(x)
    return jnp.sum(cls_logits ** 2) + jnp.sum(dist_logits)
  return nnx.value_and_grad(loss)(model)


def test_remat_gives_same_gradients():
  x = _images(create_model("deit_tiny_distilled_patch16_224", **SMALL))
  plain = create_model("deit_tiny_distilled_patch16_224", **SMALL)
  remat = create_model("deit_tiny_distilled_patch16_224", **SMALL, remat=True)
  (l1, g1), (l2, g2) = _loss_and_grads(plain, x), _loss_and_grads(remat, x)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_remat_under_jit_with_drop_path():
  model = create_model("deit_tiny_distilled_patch16_224", **SMALL, remat=True,
                       drop_path_rate=0.3)
  step = nnx.jit(lambda m, x: _loss_and_grads(m, x)[0])
  x = _images(model)
  assert np.isfinite(float(step(model, x)))


def test_fused_attention_path_matches_explicit():
  explicit = create_model("deit_tiny_distilled_patch16_224", **SMALL)
  fused = create_model("deit_tiny_distilled_patch16_224", **SMALL, attn_impl="dot_product")
  explicit.eval()
  fused.eval()
  x = _images(explicit)
  np.testing.assert_allclose(fused(x), explicit(x), atol=1e-5)


def test_gelu_is_exact_gelu_with_its_derivative():
  from deit_jax.models.vit import gelu  # pylint: disable=import-outside-toplevel
  x = jnp.linspace(-8.0, 8.0, 4001)
  exact = lambda v: jax.nn.gelu(v, approximate=False)
  np.testing.assert_allclose(gelu(x), exact(x), atol=2e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(gelu))(x), jax.vmap(jax.grad(exact))(x),
                             atol=2e-6)
  second = jax.vmap(jax.grad(jax.grad(gelu)))(x)  # custom_jvp stays differentiable
  np.testing.assert_allclose(second, jax.vmap(jax.grad(jax.grad(exact)))(x), atol=1e-5)
  assert gelu(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_split_merge_round_trip_under_jit():
  model = create_model("deit_tiny_distilled_patch16_224", **SMALL)
  model.eval()
  graphdef, state = nnx.split(model)
  x = _images(model)

  @jax.jit
  def forward(state, x):
    return nnx.merge(graphdef, state)(x)

  np.testing.assert_allclose(forward(state, x), model(x), atol=1e-6)
