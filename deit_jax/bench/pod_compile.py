"""Compiles a config's train and eval steps for a TPU slice, on this machine (no TPU
needed: libtpu from the ``tpu`` extra compiles for an abstract topology, as MaxText's
train_compile.py does), and reports whether they fit.

    python -m deit_jax.bench.pod_compile --config=configs/deit_base.py --topology=v4-32 \
        [--config.key=value ...] [--search=false] [--json]

The steps are built by the run builder (``deit_jax.builder``), i.e. exactly as the trainer
builds them: model factory, optimizer and schedule, state shardings over the config's mesh
(data / fsdp / tensor), the jitted step with donation, the global batch; with
``distill.teacher`` set, the online teacher runs inside the train step (its architecture
comes from the checkpoint, or ``distill.teacher`` may name a registered model).

Printed per step, per chip: HBM for arguments, temporaries, outputs (not aliased to
donated arguments) and code against the chip's capacity; XLA's FLOPs per image against the
analytic count; the collectives in the optimized HLO (kind, count, bytes) and its layout
copies/transposes; an ESTIMATED step time and MFU (XLA's ``optimal_seconds``, less
libtpu's -1 s placeholders, else a roofline from XLA's FLOPs and bytes accessed; no TPU
ran anything). The
largest per-chip batch that fits is searched over powers of two, with and without
``model.remat``: two compiles fit memory = fixed + per-image x batch, the prediction is
then checked by compiling it and its double. Every compile takes a CPU minute or more.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import time

# libtpu is only used to compile: no TPU VM metadata to query, no lock on a TPU device
# (several compiles may run side by side), and JAX itself computes on the CPU.
for _key, _value in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_SKIP_MDS_QUERY", "1"),
                     ("TPU_WORKER_HOSTNAMES", "localhost"), ("JAX_PLATFORMS", "cpu")):
  os.environ.setdefault(_key, _value)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from deit_jax import builder, checkpoint, cli, sharding, train_step as ts  # noqa: E402
from deit_jax.bench import hlo_stats  # noqa: E402
from deit_jax.bench.benchmark import analytic_forward_flops  # noqa: E402
from deit_jax.errors import ConfigError, UserError  # noqa: E402
from deit_jax.models import create_model, list_models, model_config  # noqa: E402
from deit_jax.teacher.feed import TRAIN_KEYS, Teacher  # noqa: E402

GIB = 2.0 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip figures of the Cloud TPU docs (cloud.google.com/tpu/docs/v4, v5e, v5p)."""
  generation: str        # as in accelerator types: v4, v5e, v5p
  hbm_gib: float         # HBM capacity (v5e/v5p pages say GB; read as GiB, like v4's)
  hbm_gbps: float        # HBM bandwidth, GB/s
  peak_tflops: float     # dense bf16
  cores_per_chip: int    # accelerator type v4-N / v5p-N counts TensorCores, v5e-N chips
  prefix: str            # libtpu's topology prefix


CHIPS = {"v4": Chip("v4", 32, 1200, 275, 2, "v4"),
         "v5e": Chip("v5e", 16, 819, 197, 1, "v5e"),
         "v5p": Chip("v5p", 95, 2765, 459, 2, "v5")}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str              # accelerator type, e.g. v4-32
  chip: Chip
  shape: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def libtpu_name(self) -> str:
    return f"{self.chip.prefix}:{'x'.join(map(str, self.shape))}"


def known_topologies() -> list[str]:
  names = [f"v4-{2 * n}" for n in _SHAPES_3D] + [f"v5e-{n}" for n in _SHAPES_2D]
  return names + [f"v5p-{2 * n}" for n in _SHAPES_3D]


def parse_topology(name: str) -> Topology:
  """A Cloud TPU accelerator type (v4-32, v5e-16 or v5litepod-16, v5p-128)."""
  match = re.fullmatch(r"(v4|v5e|v5litepod|v5p)-(\d+)", name.strip().lower())
  if match:
    chip = CHIPS["v5e" if match.group(1) == "v5litepod" else match.group(1)]
    count, remainder = divmod(int(match.group(2)), chip.cores_per_chip)
    shape = (_SHAPES_3D if chip.prefix != "v5e" else _SHAPES_2D).get(count)
    if shape and not remainder:
      return Topology(f"{chip.generation}-{match.group(2)}", chip, shape)
  raise UserError(f"unknown TPU topology {name!r}; known (Cloud TPU accelerator types): "
                  f"{', '.join(known_topologies())}")


def topology_devices(topology: Topology):
  if importlib.util.find_spec("libtpu") is None:
    raise UserError("compiling for a TPU needs libtpu: pip install -e '.[tpu]' "
                    "(or bash launch/setup.sh tpu)")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.name)  # quiets libtpu's guess
  three_d = len(topology.shape) == 3
  wrap = tuple(three_d and topology.chips >= 64 or (not three_d and d == 16)
               for d in topology.shape) + ((False,) if not three_d else ())
  desc = topologies.get_topology_desc(
      topology_name=topology.libtpu_name, platform="tpu",
      chip_config_name="megacore" if topology.chip.cores_per_chip == 2 else "default",
      chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=wrap)
  devices = list(desc.devices)
  if len(devices) != topology.chips:
    raise RuntimeError(f"libtpu gave {len(devices)} devices for {topology.libtpu_name}")
  return devices


# ---------------------------------------------------------------------------
# Building and compiling the trainer's steps
# ---------------------------------------------------------------------------

class AbstractTeacher(Teacher):
  """The trainer's teacher strategy (``deit_jax.teacher.feed``) without data or teacher
  weights: precomputed logits are one more batch key; an online teacher contributes its
  graph, the shardings of its weights and, as the train step's extra argument, their
  shapes (``step_args``)."""

  def __init__(self, config, mesh):
    super().__init__(TRAIN_KEYS)
    d = config.distill
    self.name = self.forward_flops = None
    if d.type == "none":
      return
    if not d.get("teacher", ""):   # precomputed logits: an input of the step
      self.keys += ("teacher_logits",)
      return
    model = _teacher_model(d.teacher, config)
    self.name = d.teacher
    self.model_def = ts.ModelDef.of(model)
    self.sharding = ts.model_shardings(model, mesh)
    templates = (self.model_def.params_template, self.model_def.rest_template)
    self.step_args = (_abstract(tuple(nnx.to_pure_dict(t) for t in templates),
                                self.sharding),)
    self.forward_flops = analytic_forward_flops(model.config)


def _teacher_model(spec: str, config):
  """The online teacher's (abstract) model: a checkpoint/model directory, as the trainer
  loads it, or a registered model name."""
  dtype = config.distill.get("teacher_dtype", "bfloat16")
  if spec not in list_models():
    model = checkpoint.load_trained_model(spec, dtype=dtype)[0]
    classes = getattr(model.config, "num_classes", None)
    if classes != config.num_classes:
      raise ConfigError(f"teacher {spec} predicts {classes} classes, config.num_classes is "
                        f"{config.num_classes}")
    return model
  settings = {"num_classes": config.num_classes, "dtype": dtype}
  data = {"img_size": config.aug.image_size, "in_chans": config.aug.in_chans}
  try:  # the run's input geometry, where the architecture takes it
    model_config(spec, **settings, **data)
    settings.update(data)
  except ValueError:
    pass
  return nnx.eval_shape(lambda: create_model(spec, **settings))


@dataclasses.dataclass(frozen=True)
class Steps:
  """The trainer's steps of a config on a mesh, built by ``deit_jax.builder``."""
  model: builder.Model
  state_sharding: ts.TrainState
  batch_sharding: jax.sharding.NamedSharding
  init: object                 # jitted () -> TrainState
  train_step: builder.TrainStep
  eval_step: object            # jitted (params, rest, batch) -> sums


def _trainer_steps(config, mesh, teacher: Teacher) -> Steps:
  """The trainer's model, optimizer, state shardings and jitted steps, through the same
  builder functions as ``deit_jax.main``. Nothing here touches data or device memory."""
  model = builder.model_from_config(config)
  # The schedule's length is a constant of the program: it changes no shape or cost.
  tx, schedule, _ = builder.optimizer_from_config(config, model, steps_per_epoch=1000,
                                                  total_steps=100_000)
  state_sharding, init = builder.build_state(model, tx, mesh, seed=config.seed,
                                             ema=config.ema_decay > 0)
  train_step = builder.train_step_from_config(config, model, tx, schedule, state_sharding,
                                              mesh, teacher)
  eval_step = builder.build_eval_step(model.definition, state_sharding.params,
                                      state_sharding.rest, mesh)
  return Steps(model, state_sharding, sharding.batch_sharding(mesh), init, train_step,
               eval_step)


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _is_oom(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or \
      "exceeds the memory" in text.lower()


def compile_steps(config, topology: Topology, devices, *, which=("train", "eval")) -> dict:
  """Compiles the trainer's steps of ``config`` for ``topology``; one result per step."""
  mesh = sharding.make_mesh(config.mesh.to_dict(), devices)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  batch = config.batch_size
  if batch % shards:
    raise UserError(f"global batch {batch} is not divisible by the {shards} batch shards "
                    f"(data x fsdp) of {topology.name} ({topology.chips} chips)")
  teacher = AbstractTeacher(config, mesh)
  run = _trainer_steps(config, mesh, teacher)
  cfg = run.model.config
  state = _abstract(jax.eval_shape(run.init), run.state_sharding)
  size, chans = cfg.img_size, cfg.in_chans
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=run.batch_sharding)
  images = spec((batch, size, size, chans), jnp.float32)
  forward = analytic_forward_flops(cfg)
  results = {}
  if "train" in which:
    inputs = {"image": images, "label": spec((batch,), jnp.int32)}
    if "teacher_logits" in teacher.batch_keys:
      inputs["teacher_logits"] = spec((batch, config.num_classes), jnp.float32)
    online = teacher.model_def is not None
    analytic = None if forward is None else 3 * forward + (
        (teacher.forward_flops or math.nan) if online else 0)
    results["train"] = _compile(lambda: run.train_step.compile(state, inputs), topology,
                                batch, analytic, inputs)
    if online:
      results["train"]["online_teacher"] = teacher.name
  if "eval" in which:
    inputs = {"image": images, "label": spec((batch,), jnp.int32),
              "mask": spec((batch,), jnp.bool_)}
    results["eval"] = _compile(
        lambda: run.eval_step.lower(state.params, state.rest, inputs).compile(), topology,
        batch, forward, inputs)
  return results


def _shard_bytes(tree) -> int:
  """Bytes of one device's shard of every array in ``tree`` (ShapeDtypeStructs)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def _compile(compile_step, topology: Topology, batch: int, analytic_per_image,
             inputs) -> dict:
  """Compiles (``compile_step()``) and measures one step; ``inputs`` are its batch
  arguments, whose per-chip bytes are told apart from the rest of the arguments (the
  state)."""
  start = time.perf_counter()
  try:
    compiled = compile_step()
  except Exception as e:  # pylint: disable=broad-except
    if not _is_oom(e):
      raise
    return {"batch": batch, "fits": False, "compile_s": time.perf_counter() - start,
            "error": " ".join(str(e).split())[:400]}
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = {"arguments": mem.argument_size_in_bytes, "temporaries": mem.temp_size_in_bytes,
            "outputs": mem.output_size_in_bytes - mem.alias_size_in_bytes,
            "code": mem.generated_code_size_in_bytes}
  total = sum(memory.values())
  memory["of_arguments_batch"] = _shard_bytes(inputs)
  memory["of_arguments_state"] = mem.argument_size_in_bytes - memory["of_arguments_batch"]
  chip = topology.chip
  flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  optimal = float(cost.get("optimal_seconds", -1.0))
  hlo = hlo_stats.analyze(compiled.as_text())
  # libtpu 0.0.42 prices each ConcatBitcast custom call (a relayout-free concatenation) at
  # -1 s in optimal_seconds (measured on a one-matmul step: one such call, -0.99998 s);
  # taking those placeholders out leaves XLA's estimate of every other kernel.
  placeholders = hlo["custom_calls"].get("ConcatBitcast", 0)
  corrected = optimal + placeholders if optimal < 0 else optimal
  roofline = max(flops / (chip.peak_tflops * 1e12), accessed / (chip.hbm_gbps * 1e9))
  if optimal > 0:
    step_s, source = optimal, "XLA optimal_seconds"
  elif corrected > 0:
    step_s, source = corrected, (f"XLA optimal_seconds + {placeholders} s for its "
                                 f"{placeholders} ConcatBitcast placeholders of -1 s")
  else:
    step_s, source = roofline, ("roofline: max(XLA flops / peak, XLA bytes accessed / HBM "
                                "bandwidth)")
  per_image = analytic_per_image if analytic_per_image and not math.isnan(
      analytic_per_image) else None
  model_flops = (per_image or flops * topology.chips / batch) * batch
  return {
      "batch": batch, "per_chip_batch": batch / topology.chips, "fits": total <= chip.hbm_gib * GIB,
      "compile_s": compile_s, "memory_bytes": {**memory, "total": total},
      "capacity_bytes": chip.hbm_gib * GIB,
      "xla_flops_per_image": flops * topology.chips / batch,
      "analytic_flops_per_image": per_image,
      "xla_bytes_accessed": accessed, "xla_optimal_seconds": optimal,
      "estimated_step_s": step_s, "roofline_step_s": roofline,
      "estimate_source": source,
      "estimated_images_per_s": batch / step_s if step_s > 0 else None,
      "estimated_mfu": model_flops / (step_s * chip.peak_tflops * 1e12 * topology.chips)
                       if step_s > 0 else None,
      "hlo": hlo,
  }


# ---------------------------------------------------------------------------
# The largest batch that fits
# ---------------------------------------------------------------------------

def _with(config, per_chip: int, topology: Topology, remat: bool | None):
  config = config.copy_and_resolve_references()
  config.batch_size = per_chip * topology.chips
  if remat is not None:
    config.model.remat = remat
  return config


def search_batch(config, topology: Topology, devices, remat: bool | None,
                 known: dict[int, dict] | None = None, log=print) -> dict:
  """Largest power-of-two per-chip batch whose train step fits: two fitting compiles give
  memory = fixed + slope x batch; the predicted largest power of two is compiled, and so
  is its double, which must not fit. ``known`` maps per-chip batches to earlier results."""
  known = dict(known or {})
  capacity = topology.chip.hbm_gib * GIB

  def at(per_chip):
    if per_chip not in known:
      start = time.perf_counter()
      known[per_chip] = compile_steps(_with(config, per_chip, topology, remat), topology,
                                      devices, which=("train",))["train"]
      r = known[per_chip]
      used = r.get("memory_bytes", {}).get("total")
      log(f"  batch {per_chip}/chip, remat {remat}: "
          + (f"{used / GIB:.2f} GiB" if used else "out of memory")
          + f" (compiled in {time.perf_counter() - start:.0f} s)")
    return known[per_chip]["fits"]

  per_chip = 1 << max(int(math.log2(config.batch_size / topology.chips)), 0)
  while not at(per_chip):
    if per_chip == 1:
      return {"remat": remat, "largest_per_chip_batch": 0, "predicted_per_chip_batch": None,
              "compiled": sorted(known)}
    per_chip //= 2
  predicted = None
  if at(2 * per_chip):
    m0 = known[per_chip]["memory_bytes"]["total"]
    m1 = known[2 * per_chip]["memory_bytes"]["total"]
    slope = (m1 - m0) / per_chip
    predicted = per_chip + (capacity - m0) / slope if slope > 0 else math.inf
    candidate = 2 * per_chip
    while candidate * 2 <= predicted:
      candidate *= 2
    while not at(candidate):   # the prediction was too high: step down
      candidate //= 2
    while at(2 * candidate):   # ... or too low: step up
      candidate *= 2
    per_chip = candidate
  return {"remat": remat, "largest_per_chip_batch": per_chip,
          "predicted_per_chip_batch": predicted, "compiled": sorted(known)}


def layout_per_block(config, topology: Topology, devices) -> dict:
  """Layout copies/transposes of the train step per transformer block: the step compiled
  with 1 and with 2 blocks (all else as configured); the difference is one block's."""
  runs = {}
  for depth in (1, 2):
    shallow = config.copy_and_resolve_references()
    with shallow.unlocked():
      shallow.model.depth = depth
    runs[depth] = compile_steps(shallow, topology, devices, which=("train",))["train"]
  keys = ("copies", "copies_bytes", "transposes", "transposes_bytes", "async_copies")
  block = {k: runs[2]["hlo"][k] - runs[1]["hlo"][k] for k in keys}
  block["estimated_step_s"] = runs[2]["estimated_step_s"] - runs[1]["estimated_step_s"]
  return {"per_block": block, "outside_blocks": {
      k: runs[1]["hlo"][k] - block[k] for k in keys}}


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------

def check(config, topology_name: str, *, search: bool = True, per_block: bool = False,
          which=("train", "eval"), log=print) -> dict:
  """Compiles ``config``'s steps for ``topology_name`` and searches the largest batch."""
  topology = parse_topology(topology_name)
  devices = topology_devices(topology)
  steps = compile_steps(config, topology, devices, which=which)
  result = {"model": config.model.name, "topology": topology.name,
            "libtpu_topology": topology.libtpu_name, "chips": topology.chips,
            "device_kind": devices[0].device_kind, "hbm_gib_per_chip": topology.chip.hbm_gib,
            "peak_tflops_per_chip": topology.chip.peak_tflops,
            "mesh": dict(sharding.make_mesh(config.mesh.to_dict(), devices).shape),
            "batch_size": config.batch_size, "remat": bool(config.model.get("remat", False)),
            "steps": steps, "search": []}
  if search:
    configured = result["remat"]
    per_chip = config.batch_size // topology.chips
    for remat in ((False, True) if "remat" in config.model else (None,)):
      known = ({per_chip: steps["train"]} if remat in (configured, None)
               and config.batch_size == per_chip * topology.chips
               and per_chip & (per_chip - 1) == 0 else {})
      result["search"].append(search_batch(config, topology, devices, remat, known, log))
  if per_block:
    result["layout"] = layout_per_block(config, topology, devices)
  return result


def _gib(x):
  return f"{x / GIB:.2f} GiB"


def report(r: dict) -> str:
  mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
  lines = [f"{r['model']} on {r['topology']} ({r['chips']} x {r['device_kind']}, "
           f"{r['hbm_gib_per_chip']:g} GiB HBM each; libtpu {r['libtpu_topology']}), mesh "
           f"{mesh}, global batch {r['batch_size']} ({r['batch_size'] / r['chips']:g} per "
           f"chip), remat {'on' if r['remat'] else 'off'}"]
  for name, s in r["steps"].items():
    if not s["fits"] and "memory_bytes" not in s:
      lines.append(f"{name} step: DOES NOT FIT (XLA: {s['error'][:200]})")
      continue
    m = s["memory_bytes"]
    teacher = f", online teacher {s['online_teacher']}" if s.get("online_teacher") else ""
    lines += [
        f"{name} step{teacher} (compiled in {s['compile_s']:.0f} s)",
        f"  HBM per chip   {_gib(m['arguments'])} arguments + {_gib(m['temporaries'])} "
        f"temporaries + {_gib(m['outputs'])} outputs + {_gib(m['code'])} code = "
        f"{_gib(m['total'])} of {_gib(s['capacity_bytes'])}: "
        f"{'fits' if s['fits'] else 'DOES NOT FIT'} "
        f"({100 * m['total'] / s['capacity_bytes']:.0f}%)",
        f"  FLOPs/image    XLA {s['xla_flops_per_image'] / 1e9:.2f} GFLOP, analytic "
        + (f"{s['analytic_flops_per_image'] / 1e9:.2f} GFLOP"
           + (" (3 x forward)" if name == "train" else "")
           if s["analytic_flops_per_image"] else "n/a"),
        "  collectives    " + (", ".join(
            f"{k} x{v['count']} ({v['bytes'] / 2 ** 20:.1f} MiB)"
            for k, v in s["hlo"]["collectives"].items()) or "none"),
        f"  layout         {s['hlo']['copies']} copies ({s['hlo']['copies_bytes'] / 2 ** 20:.1f}"
        f" MiB), {s['hlo']['transposes']} transposes "
        f"({s['hlo']['transposes_bytes'] / 2 ** 20:.1f} MiB); "
        f"{s['hlo']['async_copies']} async memory-space copies",
        f"  ESTIMATE       step {1e3 * s['estimated_step_s']:.2f} ms, "
        f"{s['estimated_images_per_s']:,.0f} images/s, MFU "
        f"{100 * s['estimated_mfu']:.1f}% ({s['estimate_source']}; XLA optimal_seconds "
        f"{s['xla_optimal_seconds']:.4g}; nothing ran on a TPU)"]
  for found in r["search"]:
    label = {None: "as configured", False: "without remat", True: "with remat"}[found["remat"]]
    predicted = found["predicted_per_chip_batch"]
    lines.append(f"largest per-chip batch that fits (train, powers of two) {label}: "
                 f"{found['largest_per_chip_batch']}" + (
                     f" (linear memory model: {predicted:.0f})" if predicted
                     and math.isfinite(predicted) else ""))
  if "layout" in r:
    for where, c in (("per transformer block", r["layout"]["per_block"]),
                     ("outside the blocks", r["layout"]["outside_blocks"])):
      lines.append(f"layout changes {where} (train step): {c['copies']} copies "
                   f"({c['copies_bytes'] / 2 ** 20:.1f} MiB), {c['transposes']} transposes "
                   f"({c['transposes_bytes'] / 2 ** 20:.1f} MiB)" + (
                       f"; estimated {1e3 * c['estimated_step_s']:.2f} ms per block"
                       if "estimated_step_s" in c else ""))
  return "\n".join(lines)


def _run(config) -> None:
  FLAGS = flags.FLAGS
  unknown = set(FLAGS.steps) - {"train", "eval"}
  if unknown or not FLAGS.steps:
    raise UserError(f"--steps takes train and/or eval, got {','.join(FLAGS.steps)}")
  result = check(config, FLAGS.topology, search=FLAGS.search, per_block=FLAGS.per_block,
                 which=tuple(FLAGS.steps), log=(lambda *_: None) if FLAGS.json else print)
  print(report(result), flush=True)
  if FLAGS.json:
    print(json.dumps(result, sort_keys=True), flush=True)


def main() -> None:
  cli.define_flags()
  flags.DEFINE_string("topology", None, "Cloud TPU accelerator type: v4-8, v4-32, v5e-16 "
                      "(= v5litepod-16), v5e-64, v5p-128, ...")
  flags.DEFINE_list("steps", ["train", "eval"], "the steps to compile")
  flags.DEFINE_bool("search", True, "search the largest per-chip batch that fits, with "
                    "and without remat (several more compiles)")
  flags.DEFINE_bool("per_block", False, "also count the train step's layout copies and "
                    "transposes per transformer block (two more compiles, depth 1 and 2)")
  flags.DEFINE_bool("json", False, "print one JSON object as the last line")
  flags.mark_flag_as_required("topology")
  cli.run(_run)


if __name__ == "__main__":
  main()
