"""Runs on 8 CPU devices in its own process (tests/test_train_step.py starts it).

Prints one JSON object: per mesh, the losses and a parameter checksum after a few steps,
and the compiled per-device argument bytes of deit_base's train step (2 of its 12 blocks,
to compile in seconds; every block shards alike), FSDP vs replicated.
"""

import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from deit_jax import optim, sharding, train_step as ts  # noqa: E402
from deit_jax.data import mixup  # noqa: E402
from deit_jax.models import create_model  # noqa: E402

SMALL = dict(img_size=16, patch_size=4, in_chans=3, num_classes=10, embed_dim=64, depth=2,
             num_heads=4, drop_path_rate=0.1)


def build(name, mesh, **overrides):
  model = create_model(name, **overrides)
  schedule = optim.warmup_cosine(1e-3, 100, 2)
  tx = optim.adamw(schedule, nnx.to_pure_dict(ts.split_model(model)[1]))
  step = ts.make_train_step(ts.ModelDef.of(model), tx, schedule, ts.LossConfig(
      overrides.get("num_classes", 1000), "hard"), mixup.MixupConfig())
  shardings = ts.state_shardings(model, tx, mesh)
  jitted = ts.jit_train_step(step, shardings, mesh, ("image", "label", "teacher_logits"))
  state = jax.device_put(ts.init_state(model, tx, seed=0), shardings)
  return jitted, state


def trajectory(mesh_sizes):
  devices = jax.devices()[:1] if mesh_sizes is None else jax.devices()
  mesh = sharding.make_mesh(mesh_sizes or {"data": 1}, devices)
  jitted, state = build("deit_tiny_distilled_patch16_224", mesh, **SMALL)
  rng = np.random.RandomState(0)
  losses = []
  for _ in range(3):
    batch = {"image": rng.randn(16, 16, 16, 3).astype(np.float32),
             "label": rng.randint(0, 10, 16).astype(np.int32),
             "teacher_logits": rng.randn(16, 10).astype(np.float32)}
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    state, metrics = jitted(state, batch)
    losses.append(float(metrics["train_loss"]))
  flat = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(state.params)])
  return {"losses": losses, "params": flat[::97].tolist()}


def argument_bytes(mesh_sizes):
  mesh = sharding.make_mesh(mesh_sizes)
  model = nnx.eval_shape(lambda: create_model("deit_base_distilled_patch16_224", depth=2))
  schedule = optim.warmup_cosine(1e-3, 100, 2)
  abstract_params = nnx.to_pure_dict(ts.split_model(model)[1])
  tx = optim.adamw(schedule, abstract_params)
  step = ts.make_train_step(ts.ModelDef.of(model), tx, schedule, ts.LossConfig(1000, "hard"),
                            mixup.MixupConfig())
  shardings = ts.state_shardings(model, tx, mesh)
  jitted = ts.jit_train_step(step, shardings, mesh, ("image", "label", "teacher_logits"))
  state = jax.eval_shape(lambda: ts.init_state(
      create_model("deit_base_distilled_patch16_224", depth=2), tx, seed=0))
  batch = {"image": jax.ShapeDtypeStruct((8, 224, 224, 3), np.float32),
           "label": jax.ShapeDtypeStruct((8,), np.int32),
           "teacher_logits": jax.ShapeDtypeStruct((8, 1000), np.float32)}
  compiled = jitted.lower(state, batch).compile()
  batch_bytes = (8 * 224 * 224 * 3 * 4 + 8 * 4 + 8 * 1000 * 4) // 8  # per device share
  return compiled.memory_analysis().argument_size_in_bytes - batch_bytes


def main():
  what = sys.argv[1]
  if what == "meshes":
    meshes = {"single": None, "8x1x1": {"data": 8}, "2x4x1": {"data": 2, "fsdp": 4},
              "2x2x2": {"data": 2, "fsdp": 2, "tensor": 2}}
    print(json.dumps({name: trajectory(sizes) for name, sizes in meshes.items()}))
  else:
    replicated = argument_bytes({"data": 8})
    fsdp = argument_bytes({"fsdp": 8})
    print(json.dumps({"replicated_bytes": replicated, "fsdp_bytes": fsdp}))


if __name__ == "__main__":
  main()
