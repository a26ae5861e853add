"""How often two classifiers disagree: the DeiT paper's Table 4 (arXiv 2012.12877), the
fraction of eval examples on which the top-1 decisions of two models differ, for every
pair of N models, with the ground truth as the first row (its entries are error rates).

    python -m deit_jax.disagreement --config=configs/<file>.py \
        --logits=cnn=DIR --model=none=WORKDIR --model=cls=WORKDIR2:cls \
        --model=dist=WORKDIR2:dist --model=avg=WORKDIR2:avg [--split=test] [--out=DIR]

``--model=NAME=PATH[:HEAD]`` is a training workdir (its latest committed checkpoint), an
orbax step or a model directory; HEAD is cls, dist or avg (default: avg, the eval output; a
plain model has only its class token, so cls and avg are the same and dist is refused).
``--logits=NAME=DIR`` is stored per-image logits of the eval split (``python -m
deit_jax.teacher precompute --split=...``), e.g. a teacher's. Rows and columns are the
ground truth, then every --logits, then every --model, in the order given. The data and
eval transform come from the config; every example counts once across hosts (padded,
masked eval stream, as ``deit_jax.evaluate``). ``--out`` (local or ``gs://``) writes
disagreement.json, disagreement.csv and disagreement.png (a heatmap; needs matplotlib, the
``plots`` extra).
"""

from __future__ import annotations

import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from deit_jax import builder, cli, config_glue, files, sharding, train_step as ts
from deit_jax.data import feeding
from deit_jax.errors import UserError
from deit_jax.eval_step import head_logits
from deit_jax.teacher.feed import EVAL_KEYS

FLAGS = flags.FLAGS

HEADS = ("cls", "dist", "avg")
GROUND_TRUTH = "groundtruth"


def pairwise_counts(predictions: jax.Array, labels: jax.Array,
                    mask: jax.Array) -> dict[str, jax.Array]:
  """Sums over the unmasked examples of a batch.

  Args:
    predictions: (M, B) int top-1 decisions of M models.
    labels: (B,) ground-truth labels.
    mask: (B,) 1 for a real example, 0 for padding.
  Returns:
    "differ": (M+1, M+1) count of examples on which two rows differ, row/column 0 being
    the labels; "count": the number of real examples.
  """
  rows = jnp.concatenate([labels[None].astype(predictions.dtype), predictions], axis=0)
  differ = (rows[:, None, :] != rows[None, :, :]).astype(jnp.float32)
  return {"differ": jnp.sum(differ * mask.astype(jnp.float32), axis=-1),
          "count": jnp.sum(mask.astype(jnp.float32))}


def disagreement_fractions(totals: dict) -> np.ndarray:
  """Summed ``pairwise_counts`` -> the (M+1, M+1) fractions of disagreement."""
  return np.asarray(totals["differ"], np.float64) / max(float(totals["count"]), 1.0)


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  source: str          # checkpoint path or logits directory
  head: str | None     # cls / dist / avg for a checkpoint; None for stored logits


def parse_entries(models: list[str], logits: list[str]) -> list[Entry]:
  """``--logits`` then ``--model`` values as entries; a malformed one is a UserError."""
  entries = []
  for flag, values in (("logits", logits), ("model", models)):
    for value in values:
      name, sep, source = value.partition("=")
      if not sep or not name or not source:
        raise UserError(f"--{flag}={value}: expected NAME=" +
                        ("PATH[:cls|dist|avg]" if flag == "model" else "DIR"))
      head = None
      if flag == "model":
        path, colon, tail = source.rpartition(":")
        source, head = (path, tail) if colon and tail in HEADS else (source, "avg")
      entries.append(Entry(name, source, head))
  names = [GROUND_TRUTH] + [e.name for e in entries]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise UserError(f"model names must be unique (and not {GROUND_TRUTH!r}): "
                    f"{', '.join(repeated)} repeated")
  if len(entries) < 2:
    raise UserError("give at least two models (--model and/or --logits) to compare")
  return entries


def make_step(model_defs: list, entries: list[Entry], checkpoint_of: dict[str, int]):
  """``(states, batch) -> pairwise_counts`` for every entry: each checkpoint runs once
  per batch, in eval mode, and gives each of its entries the chosen head."""
  def step(states, batch):
    outputs = []
    for model_def, (params, rest) in zip(model_defs, states):
      model = model_def.merge(params, rest)
      model.eval()
      avg, cls, dist = head_logits(model, batch["image"])
      outputs.append({"avg": avg, "cls": cls, "dist": dist})
    predictions = [
        jnp.argmax(batch[f"logits/{e.name}"] if e.head is None
                   else outputs[checkpoint_of[e.source]][e.head], axis=-1)
        for e in entries]
    return pairwise_counts(jnp.stack(predictions), batch["label"], batch["mask"])

  return step


class _StoredLogits:
  """Joins every stored-logits entry to the eval batch, as ``logits/<name>``."""

  def __init__(self, stores: dict):
    self.stores = stores

  def join(self, batch):
    out = {k: batch[k] for k in EVAL_KEYS}
    for name, store in self.stores.items():
      out[f"logits/{name}"] = store.lookup(batch["id"])
    return out


def run_cli(config) -> dict:
  entries = parse_entries(FLAGS.model or [], FLAGS.logits or [])
  if FLAGS.out and FLAGS.plot:
    _pyplot()  # a missing matplotlib is reported before any compute
  source = config_glue.open_split(config, FLAGS.split or config.eval_split)
  stores = {e.name: config_glue.eval_teacher(e.source, source).store
            for e in entries if e.head is None}
  mesh = sharding.make_mesh(config.mesh.to_dict())
  checkpoint_of, model_defs, states, shardings, infos = {}, [], [], [], {}
  for e in entries:
    if e.head is None or e.source in checkpoint_of:
      continue
    model, info = config_glue.load_model_for(config, e.source, source=source,
                                             dtype=config.model.get("dtype", "float32"))
    info["distilled"] = bool(getattr(model.config, "distilled", False))
    params, rest, params_sharding, rest_sharding = builder.device_put_model(model, mesh)
    checkpoint_of[e.source] = len(model_defs)
    model_defs.append(ts.ModelDef.of(model))
    states.append((params, rest))
    shardings.append((params_sharding, rest_sharding))
    infos[e.source] = info
  for e in entries:
    if e.head == "dist" and not infos[e.source]["distilled"]:
      raise UserError(f"--model={e.name}: {e.source} is a plain model (class token "
                      "only) and has no dist head; use :cls")
  step = jax.jit(make_step(model_defs, entries, checkpoint_of),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)))
  batches = feeding.eval_batches(source, config_glue.augment_config(config),
                                 config_glue.host_slice(config.batch_size), mesh,
                                 _StoredLogits(stores))

  totals = None
  for batch in batches:
    counts = jax.device_get(step(states, batch))
    totals = counts if totals is None else jax.tree.map(np.add, totals, counts)
  names = [GROUND_TRUTH] + [e.name for e in entries]
  matrix = disagreement_fractions(totals)
  result = {
      "names": names, "matrix": matrix.tolist(),
      "top1": {n: 100.0 * (1.0 - matrix[0, i]) for i, n in enumerate(names) if i},
      "num_examples": int(totals["count"]), "dataset": source.name, "split": source.split,
      "sources": {e.name: {"path": e.source, "head": e.head,
                           "step": infos[e.source]["step"] if e.head else None}
                  for e in entries}}
  cli.say(format_table(names, matrix, f"{source.name}/{source.split}",
                       result["num_examples"]))
  if FLAGS.out and jax.process_index() == 0:
    for path in write_outputs(FLAGS.out, result, FLAGS.plot):
      cli.say(f"wrote {path}")
  return result


def format_table(names: list[str], matrix: np.ndarray, split: str, count: int) -> str:
  """The paper's layout: a symmetric matrix of fractions, plus each model's top-1."""
  width = max(8, *map(len, names)) + 1
  lines = [f"fraction of the {count} examples of {split} on which two models' top-1 "
           "decisions differ (row groundtruth: error rate)",
           " " * width + "".join(f"{n:>{width}}" for n in names) + f"{'top-1 %':>{width}}"]
  for i, name in enumerate(names):
    top1 = "" if i == 0 else f"{100.0 * (1.0 - matrix[0, i]):.2f}"
    lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}.3f}" for v in matrix[i]) +
                 f"{top1:>{width}}")
  return "\n".join(lines)


def write_outputs(directory: str, result: dict, plot: bool = True) -> list[str]:
  """disagreement.json, .csv and (with ``plot``) .png in ``directory`` (local or gs://)."""
  base = files.join(files.absolute(directory), "disagreement")
  files.write_text(base + ".json", json.dumps(result, indent=2, sort_keys=True))
  names, matrix = result["names"], np.asarray(result["matrix"])
  rows = [",".join(["", *names, "top1"])]
  for i, name in enumerate(names):
    top1 = "" if i == 0 else f"{result['top1'][name]:.4f}"
    rows.append(",".join([name, *(f"{v:.6f}" for v in matrix[i]), top1]))
  files.write_text(base + ".csv", "\n".join(rows) + "\n")
  written = [base + ".json", base + ".csv"]
  if plot:
    written.append(plot_heatmap(base + ".png", names, matrix,
                                f"{result['dataset']}/{result['split']}"))
  return written


def plot_heatmap(path: str, names: list[str], matrix: np.ndarray, title: str) -> str:
  """The matrix as a PNG heatmap at ``path`` (local or gs://); returns ``path``."""
  plt = _pyplot()
  size = 1.2 + 0.9 * len(names)
  fig, ax = plt.subplots(figsize=(size + 1.5, size))
  image = ax.imshow(matrix, cmap="viridis")
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  ax.set_yticks(range(len(names)), names)
  bright = matrix.max() / 2 if matrix.size else 0
  for i in range(len(names)):
    for j in range(len(names)):
      ax.text(j, i, f"{matrix[i, j]:.3f}", ha="center", va="center", fontsize=9,
              color="black" if matrix[i, j] > bright else "white")
  fig.colorbar(image, ax=ax, label="fraction of examples where the decisions differ")
  ax.set_title(f"Disagreement between classifiers, {title}")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  files.write_bytes(path, buffer.getvalue())
  return path


def _pyplot():
  try:
    import matplotlib
  except ImportError:
    raise UserError("the heatmap needs matplotlib: pip install 'deit-jax[plots]' (or bash "
                    "launch/setup.sh plots), or pass --noplot") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def main() -> None:
  cli.define_flags()
  flags.DEFINE_multi_string("model", [], "NAME=PATH[:cls|dist|avg]: a training workdir, "
                            "orbax step or model directory and the head to compare")
  flags.DEFINE_multi_string("logits", [], "NAME=DIR: stored per-image logits of the split")
  flags.DEFINE_string("split", None, "split to compare on (default: the config's eval_split)")
  flags.DEFINE_string("out", None, "directory for disagreement.json/.csv/.png (local or "
                      "gs://)")
  flags.DEFINE_bool("plot", True, "write the PNG heatmap with --out (needs matplotlib)")
  cli.run(run_cli)


if __name__ == "__main__":
  main()
