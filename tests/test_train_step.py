"""Train step: sharded meshes equal one device, FSDP memory, accumulation, EMA, mesh errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from deit_jax import optim, sharding, train_step as ts
from deit_jax.data import mixup
from deit_jax.models import create_model

WORKER = os.path.join(os.path.dirname(__file__), "sharding_worker.py")
SMALL = dict(img_size=16, patch_size=4, in_chans=3, num_classes=10, embed_dim=32, depth=2,
             num_heads=2)


def _worker(what):
  out = subprocess.run([sys.executable, WORKER, what], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "XLA_FLAGS": ""})
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_meshes_reproduce_single_device_training():
  results = _worker("meshes")
  reference = results.pop("single")
  for name, result in results.items():
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(result["params"], reference["params"], atol=5e-6, err_msg=name)


def test_fsdp_shards_deit_base_state():
  sizes = _worker("memory")
  ratio = sizes["fsdp_bytes"] / sizes["replicated_bytes"]
  print(f"deit_base_distilled (2 blocks) params+opt state+EMA per device: replicated "
        f"{sizes['replicated_bytes'] / 2**20:.0f} MiB, FSDP over 8 "
        f"{sizes['fsdp_bytes'] / 2**20:.0f} MiB ({ratio:.3f}x)")
  assert ratio <= 0.15


def _setup(accum=1, mixup_config=None, distillation="hard", ema_decay=0.5, **overrides):
  model = create_model("deit_tiny_distilled_patch16_224", **SMALL, **overrides)
  schedule = optim.warmup_cosine(1e-3, 100, 2)
  tx = optim.adamw(schedule, nnx.to_pure_dict(ts.split_model(model)[1]))
  step = ts.make_train_step(ts.ModelDef.of(model), tx, schedule,
                            ts.LossConfig(10, distillation), mixup_config,
                            ema_decay=ema_decay, grad_accum_steps=accum)
  return jax.jit(step), ts.init_state(model, tx, seed=0)


def _batch(seed=0, n=8):
  rng = np.random.RandomState(seed)
  return {"image": jnp.asarray(rng.randn(n, 16, 16, 3), jnp.float32),
          "label": jnp.asarray(rng.randint(0, 10, n), jnp.int32),
          "teacher_logits": jnp.asarray(rng.randn(n, 10), jnp.float32)}


def test_gradient_accumulation_matches_full_batch():
  full_step, state = _setup(accum=1)
  accum_step, state2 = _setup(accum=4)
  full, m1 = full_step(state, _batch())
  accum, m2 = accum_step(state2, _batch())
  np.testing.assert_allclose(m1["train_loss"], m2["train_loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(accum.params)):
    np.testing.assert_allclose(a, b, atol=2e-6)


def test_bf16_compute_keeps_fp32_master_weights():
  step32, state32 = _setup()
  step16, state16 = _setup(dtype="bfloat16")
  new32, m32 = step32(state32, _batch())
  new16, m16 = step16(state16, _batch())
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((new16.params, new16.opt_state,
                                                               new16.ema))
             if jnp.issubdtype(x.dtype, jnp.floating))
  np.testing.assert_allclose(m16["train_loss"], m32["train_loss"], rtol=2e-2)
  moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new16.params),
                                                        jax.tree.leaves(state16.params))]
  assert max(moved) > 0


def test_ema_tracks_parameters():
  step, state = _setup(ema_decay=0.75)
  new, _ = step(state, _batch())
  for ema, old, params in zip(jax.tree.leaves(new.ema), jax.tree.leaves(state.params),
                              jax.tree.leaves(new.params)):
    np.testing.assert_allclose(ema, 0.75 * old + 0.25 * params, atol=1e-7)


def test_step_with_mixup_trains():
  step, state = _setup(mixup_config=mixup.MixupConfig())
  losses = []
  for _ in range(8):
    state, metrics = step(state, _batch(0))
    losses.append(float(metrics["train_loss"]))
  assert losses[-1] < losses[0] and int(state.step) == 8
  assert set(metrics) >= {"train_loss", "loss_base", "loss_distill", "train_accuracy",
                          "grad_norm", "lr"}


def test_plain_model_trains_with_hard_distillation_on_its_class_token():
  model = create_model("deit_tiny_patch16_224", **SMALL)
  schedule = optim.warmup_cosine(1e-3, 100, 2)
  tx = optim.adamw(schedule, nnx.to_pure_dict(ts.split_model(model)[1]))
  step = jax.jit(ts.make_train_step(ts.ModelDef.of(model), tx, schedule,
                                    ts.LossConfig(10, "hard"), None, ema_decay=0.0))
  state = ts.init_state(model, tx, seed=0, ema=False)
  batch = _batch()
  logits = np.asarray(model(batch["image"]), np.float64)  # no dropout: train == eval
  log_p = logits - logits.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  rows = np.arange(8)
  smoothed = 0.9 * -log_p[rows, np.asarray(batch["label"])] + 0.1 * -log_p.mean(1)
  to_teacher = -log_p[rows, np.asarray(batch["teacher_logits"]).argmax(1)]
  new, metrics = step(state, batch)
  np.testing.assert_allclose([metrics["loss_base"], metrics["loss_distill"]],
                             [smoothed.mean(), to_teacher.mean()], rtol=1e-5)
  np.testing.assert_allclose(metrics["train_loss"],
                             0.5 * (smoothed.mean() + to_teacher.mean()), rtol=1e-5)
  for _ in range(5):
    new, later = step(new, batch)
  assert float(later["loss_distill"]) < float(metrics["loss_distill"])


def test_mesh_shape_resolution_and_errors():
  assert sharding.mesh_shape({"data": -1}, 8) == (8, 1, 1)
  assert sharding.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="cannot be split"):
    sharding.mesh_shape({"data": -1, "tensor": 3}, 8)
  with pytest.raises(ValueError, match="unknown mesh axes"):
    sharding.mesh_shape({"model": 2}, 8)
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.mesh_shape({"data": 2, "fsdp": 2}, 8)


def test_logical_rules_replicate_what_does_not_divide():
  mesh = jax.sharding.AbstractMesh((2, 2, 2), sharding.MESH_AXES)
  assert sharding.logical_to_spec(("embed", "mlp"), (768, 3072), mesh) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("embed", "classes"), (768, 1000), mesh) == P("fsdp")
  assert sharding.logical_to_spec(("embed",), (7,), mesh) == P()


def test_activations_are_pinned_to_the_batch_split_only_on_a_mesh():
  """``constrain`` is what keeps XLA from splitting the residual stream along the
  embedding under FSDP (tests/test_pod_compile.py measures the collectives it saves)."""
  def tokens(x):
    return sharding.constrain(x, ("batch", None, None))

  def pinned(x):
    eqns = [e for e in jax.make_jaxpr(tokens)(x).jaxpr.eqns
            if e.primitive.name == "sharding_constraint"]
    return eqns[0].params["sharding"].spec if eqns else None

  x = jnp.zeros((16, 5, 8))
  assert pinned(x) is None  # eager use, or a jit without a mesh: untouched
  mesh = jax.sharding.AbstractMesh((2, 4, 1), sharding.MESH_AXES)
  with jax.sharding.use_abstract_mesh(mesh):
    assert pinned(x) == P(("data", "fsdp"), None, None)
    assert pinned(jnp.zeros((12, 5, 8))) == P(P.UNCONSTRAINED, None, None)  # 12 over 8
  traced = sharding.on_mesh(pinned, jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(
      1, 1, 1), sharding.MESH_AXES))
  assert traced(x) == P(("data", "fsdp"), None, None)
