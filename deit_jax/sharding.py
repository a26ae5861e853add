"""Mesh construction and the one table that maps logical axis names to mesh axes.

The mesh has three axes: ``data`` (pure data parallelism: parameters replicated),
``fsdp`` (data parallel too, but parameters and optimizer state are sharded over it along
their "embed" dimension and gathered per layer by XLA), and ``tensor`` (Megatron-style
splits of attention heads and MLP hidden units). The batch is split over data x fsdp.

Models annotate parameters with logical names (``deit_jax.models.LOGICAL_AXES``), and pin
their activations with ``constrain(x, ("batch", None, None))``; ``RULES`` below is the only
place that decides where each name goes. Pinning the residual stream to the batch split
matters under FSDP: left to itself, XLA's sharding propagation follows the "embed"-sharded
parameters into the activations and partitions part of the computation along the embedding
(docs/tpu.md, "FSDP").
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deit_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis or axes (or None: replicated along that dimension)
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),  # activations: the examples of a batch
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("classes", None),
    ("patch", None),
    ("channels", "fsdp"),  # convnets: the output channels of a conv, BN and dense layer
)


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
  """Resolves {"data": -1, "fsdp": 2, "tensor": 1} (-1 = the rest) against the device count."""
  unknown = set(axis_sizes) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f"unknown mesh axes {sorted(unknown)}; the axes are {MESH_AXES}")
  sizes = [int(axis_sizes.get(name, 1)) for name in MESH_AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ConfigError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh axis sizes must be positive or -1, got {dict(axis_sizes)}")
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(f"{num_devices} devices cannot be split into mesh "
                       f"{dict(zip(MESH_AXES, sizes))}")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"there are {num_devices}")
  return tuple(sizes)


def make_mesh(axis_sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(axis_sizes, len(devices))
  # Auto axes: jit's in/out shardings pin the state and batch, XLA propagates the rest.
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto)  # topology-aware device order
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int],
                    mesh: Mesh, rules=RULES) -> P:
  """PartitionSpec for one parameter; a dimension the mesh axis does not divide stays
  replicated (e.g. 1000 classes over a tensor axis of 8)."""
  if not names:
    return P()
  spec = [None if n == 1 or size % n else axis
          for size, axis, n in _mapped(names, shape, mesh, rules)]
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def _mapped(names, shape, mesh, rules) -> list[tuple[int, Any, int]]:
  """Per dimension: (its size, its mesh axis or axes by ``rules`` or None, their size)."""
  table, out = dict(rules), []
  for name, size in zip(names, shape):
    axis = table.get(name) if name is not None else None
    axes = () if axis is None else (axis,) if isinstance(axis, str) else axis
    out.append((size, axis, math.prod(mesh.shape[a] for a in axes)))
  return out


def constrain(x: jax.Array, names: Sequence[str | None], rules=RULES) -> jax.Array:
  """``x`` pinned to the sharding its logical dimension names map to, where the function
  is traced by ``on_mesh``; anywhere else (eager calls, un-meshed jits) ``x`` unchanged.
  A named dimension that its mesh axes do not divide is left to XLA, not replicated."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  spec = [P.UNCONSTRAINED if axis is not None and size % n else axis
          for size, axis, n in _mapped(names, x.shape, mesh, rules)]
  return jax.lax.with_sharding_constraint(x, P(*spec))


def on_mesh(fn: Callable, mesh: Mesh) -> Callable:
  """``fn`` traced with ``mesh`` as the abstract mesh, so that ``constrain`` applies in
  it: wrap a step before ``jax.jit``."""

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced


def state_shardings(state: nnx.State, mesh: Mesh, rules=RULES) -> Any:
  """NamedShardings for every leaf of an NNX state, from each Variable's logical names."""

  def one(variable):
    names = variable.get_metadata().get("out_sharding") if hasattr(variable,
                                                                   "get_metadata") else None
    shape = getattr(variable, "shape", ())
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over data x fsdp, everything else replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
