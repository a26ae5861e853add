"""What the pod path asks of a bucket, measured through the local GCS stand-in.

    python -m deit_jax.bench.bucket_io [--images=1000] [--latencies_ms=0,10,30,80]
        [--seconds=15] [--json]

Builds ``--images`` JPEGs cut from real photographs (~500x375, as
``deit_jax.bench.input_pipeline``) as a TFDS dataset in the array_record format, as
``deit_jax.data.prepare`` leaves ImageNet, copies it into a bucket on the stand-in
(``deit_jax.bench.gcs_standin``) and measures, per client:

* **records**: the trainer's read path (the train pipeline's index stream and batched reads,
  ``deit_jax.data.sources``) from the bucket and from the local disk: records/s at each
  ``--latencies_ms`` per request, requests per record, bytes on the wire per record against
  the record's own size, connections;
* **staging**: ``deit_jax.data.stage`` of the whole dataset from the bucket at each
  latency (after which the reads are local);
* **checkpoint**: one save of a DeiT-Ti-sized train state (parameters and AdamW's two
  moments) with the trainer's ``TrainCheckpoints``: requests and bytes per client, and the
  last writes of the save (how orbax commits a step on GCS);
* **log line**: what a line of ``<workdir>/train.log`` costs the step when GCS takes one
  write per second per object: a flush per line (TensorFlow's GCS file) against
  ``files.AppendLog``.

Every loop is bounded (``--seconds`` per measurement; the stand-in stops answering after
``--max_requests``); the stand-in listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from deit_jax import cli  # noqa: E402

BUCKET = "deit-bench"


def _define_flags() -> None:
  flags.DEFINE_integer("images", 1000, "JPEGs in the dataset")
  flags.DEFINE_list("latencies_ms", ["0", "10", "30", "80"], "added to every request")
  flags.DEFINE_float("seconds", 15.0, "length of each read measurement")
  flags.DEFINE_integer("threads", 2, "tf.data threads (the read path's private pool)")
  flags.DEFINE_integer("max_requests", 2_000_000, "the stand-in's bound")
  flags.DEFINE_bool("json", False, "print one JSON object instead of the tables")


def _client(standin, name: str) -> dict:
  return standin.stats.snapshot()["clients"].get(name, {})


def copy_tree(local: str, standin, prefix: str) -> None:
  for root, _, names in os.walk(local):
    for name in names:
      path = os.path.join(root, name)
      key = prefix + "/" + os.path.relpath(path, local)
      with open(path, "rb") as f:
        standin.put(BUCKET, key, f.read())


def record_figures(standin, builder_dir: str, local_dir: str, latencies, seconds,
                   threads) -> dict:
  """Records/s through the trainer's read path, locally and from the bucket at each
  latency; requests, bytes and connections per record."""
  import tensorflow_datasets as tfds

  from deit_jax.bench.input_pipeline import read_throughput
  from deit_jax.data import sources
  builder = tfds.builder_from_directory(local_dir)
  local = sources.from_builder(builder, "train", in_memory_limit_bytes=0)
  sizes = [len(r) for r in builder.as_data_source(
      split="train", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)]
  figures = {"records": len(sizes), "mean_record_bytes": float(np.mean(sizes)),
             "local": {"records_per_sec": read_throughput(local, threads, seconds).per_sec}}
  remote = sources.from_builder(tfds.builder_from_directory(builder_dir), "train",
                                in_memory_limit_bytes=0)
  for latency in latencies:
    standin.configure(latency_s=latency / 1e3)
    standin.reset_stats()
    rate = read_throughput(remote, threads, seconds)
    c = _client(standin, "array_record")
    reads = max(1, c.get("requests", 0))
    records = rate.per_sec * seconds  # approximately: the measured window
    figures[f"{latency}ms"] = {
        "records_per_sec": rate.per_sec,
        "of_local": rate.per_sec / figures["local"]["records_per_sec"],
        "requests": c.get("requests", 0), "connections": c.get("connections", 0),
        "max_in_flight": c.get("max_in_flight", 0),
        "bytes_per_request": c.get("bytes_sent", 0) / reads,
        "wire_over_record": c.get("bytes_sent", 0) / reads / figures["mean_record_bytes"],
        "requests_per_record_est": c.get("requests", 0) / max(1.0, records)}
  standin.configure(latency_s=0.0)
  return figures


def staging_figures(standin, remote_dir: str, dataset: str, latencies) -> dict:
  """``deit_jax.data.stage`` of the whole dataset at each latency: seconds, MB/s, requests,
  and bytes on the wire against the dataset's."""
  from deit_jax.data import stage
  figures = {}
  for latency in latencies:
    standin.configure(latency_s=latency / 1e3)
    standin.reset_stats()
    with tempfile.TemporaryDirectory() as local:
      start = time.time()
      stage.stage(dataset, data_dir=remote_dir, local_dir=local, say=lambda _: None)
      seconds = time.time() - start
      size = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(local)
                 for f in names)
    c = _client(standin, "tensorflow")
    figures[f"{latency}ms"] = {"seconds": seconds, "mb_per_sec": size / 1e6 / seconds,
                               "requests": c.get("requests", 0),
                               "wire_over_data": c.get("bytes_sent", 0) / size}
  standin.configure(latency_s=0.0)
  return figures


def checkpoint_figures(standin) -> dict:
  """One save of a DeiT-Ti-sized train state (after a first one): requests and bytes per
  client, and the save's last writes."""
  import jax
  from flax import nnx

  from deit_jax import checkpoint, files
  from deit_jax.models import create_model
  params = nnx.to_pure_dict(nnx.state(create_model("deit_tiny_distilled_patch16_224"),
                                      nnx.Param))
  state = {"params": params, "mu": params, "nu": params}
  n_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  workdir = f"gs://{BUCKET}/runs/bench"
  saver = checkpoint.TrainCheckpoints(workdir, every_steps=1, keep=3)
  saver.save(1, state, {"step": 1}, {"model": "deit_tiny"})
  saver.wait()
  standin.reset_stats()
  start = time.time()
  saver.save(2, state, {"step": 2}, {"model": "deit_tiny"})
  saver.wait()
  seconds = time.time() - start
  snapshot = standin.stats.snapshot()
  saver.close()
  assert checkpoint.committed_steps(files.join(workdir, "checkpoints")) == [1, 2]
  writes = [f"{r['client']}: {r['object'].removeprefix('runs/bench/checkpoints/')}"
            for r in snapshot["log"] if r.get("object")]
  return {"state_bytes": n_bytes, "seconds": seconds,
          "clients": {k: v for k, v in snapshot["clients"].items() if k != "control"},
          "objects": len([n for n in standin.names(BUCKET, "runs/bench/checkpoints/2/")]),
          "last_writes": writes[-5:]}


def log_line_figures(standin, lines: int = 6) -> dict:
  """Seconds a log line costs the caller under GCS's one write per second per object: a
  flush per line against files.AppendLog."""
  import tensorflow as tf

  from deit_jax import files
  standin.configure(write_interval_s=1.0)
  out = {}
  flushed = tf.io.gfile.GFile(f"gs://{BUCKET}/logs/flushed.log", "a")
  appended = files.AppendLog(f"gs://{BUCKET}/logs/appended.log")
  for name, write in (("flush_per_line", lambda s: (flushed.write(s + "\n"),
                                                    flushed.flush())),
                      ("append_log", appended.write)):
    waits = []
    for i in range(lines):
      start = time.time()
      write(f"step {i}")
      waits.append(time.time() - start)
      time.sleep(0.1)  # a fast step
    out[name] = {"max_s": max(waits), "mean_s": float(np.mean(waits[1:]))}
  start = time.time()
  appended.close()
  flushed.close()
  out["append_log"]["close_s"] = time.time() - start
  standin.configure(write_interval_s=0.0)
  return out


def main() -> int:
  args = flags.FLAGS
  from deit_jax.bench.gcs_standin import StandIn
  from deit_jax.bench.input_pipeline import make_array_record_dataset, make_image_folder
  latencies = [float(x) for x in args.latencies_ms]
  with tempfile.TemporaryDirectory() as root, \
      StandIn(max_requests=args.max_requests) as standin:
    make_image_folder(root, args.images)
    builder = make_array_record_dataset(root, os.path.join(root, "tfds"))
    local_dir = str(builder.data_dir)  # <root>/tfds/<name>/<version>
    copy_tree(os.path.join(root, "tfds"), standin, "tfds")
    standin.activate()
    remote_root = f"gs://{BUCKET}/tfds"
    remote_dir = remote_root + local_dir[len(os.path.join(root, "tfds")):]
    figures = {"records": record_figures(standin, remote_dir, local_dir, latencies,
                                         args.seconds, args.threads),
               "staging": staging_figures(standin, remote_root, builder.name, latencies),
               "checkpoint": checkpoint_figures(standin),
               "log_line": log_line_figures(standin)}
  if args.json:
    print(json.dumps(figures))
    return 0
  r = figures["records"]
  print(f"records: {r['records']} JPEG records, mean {r['mean_record_bytes'] / 1e3:.1f} KB; "
        f"{args.threads} tf.data threads, {args.seconds:.0f} s per figure")
  print(f"  local disk            {r['local']['records_per_sec']:8.0f} records/s")
  for latency in latencies:
    x = r[f"{latency}ms"]
    print(f"  bucket, {latency:3.0f} ms/request {x['records_per_sec']:8.0f} records/s "
          f"({x['of_local']:.0%} of local)  {x['requests']} requests on "
          f"{x['connections']} connections, up to {x['max_in_flight']} at once, "
          f"{x['bytes_per_request'] / 1e3:.0f} KB sent per "
          f"request = {x['wire_over_record']:.1f}x the mean record")
  for latency in latencies:
    x = figures["staging"][f"{latency}ms"]
    print(f"  staged, {latency:3.0f} ms/request: the dataset in {x['seconds']:.1f} s "
          f"({x['mb_per_sec']:.0f} MB/s, {x['requests']} requests, "
          f"{x['wire_over_data']:.2f}x its bytes on the wire), then read at the local rate")
  c = figures["checkpoint"]
  print(f"checkpoint: one save of {c['state_bytes'] / 1e6:.0f} MB ({c['objects']} objects) "
        f"in {c['seconds']:.1f} s:")
  for client, v in sorted(c["clients"].items()):
    print(f"  {client:22s} {v.get('requests', 0):5d} requests, {v.get('connections', 0):4d} "
          f"connections, {v.get('bytes_received', 0) / 1e6:7.1f} MB up, "
          f"{v.get('bytes_sent', 0) / 1e6:6.2f} MB down")
  print("  last writes: " + " | ".join(c["last_writes"]))
  g = figures["log_line"]
  print(f"log line at 1 write/s per object: flush per line {g['flush_per_line']['mean_s']:.2f} "
        f"s/line (max {g['flush_per_line']['max_s']:.2f}); AppendLog "
        f"{g['append_log']['max_s'] * 1e3:.1f} ms max, close {g['append_log']['close_s']:.2f} s")
  return 0


if __name__ == "__main__":
  _define_flags()
  cli.run_plain(main)
