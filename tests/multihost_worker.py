"""One process of the 2-process input test (run by tests/test_feeding.py, not by pytest)."""

import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import jax


def main():
  port, process_id, process_count, data_dir, out = sys.argv[1:6]
  process_id, process_count = int(process_id), int(process_count)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_num_cpu_devices", 8 // process_count)
  if process_count > 1:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=process_count, process_id=process_id)
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  from deit_jax.data import feeding, pipeline, sources

  mesh = Mesh(np.array(jax.devices()).reshape(8), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  source = sources.open_source("fashion_mnist", "test", data_dir=data_dir)
  config = pipeline.AugmentConfig(image_size=28, crop="pad_crop", pad=2, mean=(0.286,),
                                  std=(0.353,), in_chans=1)
  iterator = pipeline.TrainIterator(source, config, pipeline.HostSlice(48, jax.process_index(),
                                                                      jax.process_count()),
                                    seed=5)
  total = jax.jit(lambda b: (b["id"].sum(), (b["image"] * b["id"][:, None, None, None]).sum()),
                  out_shardings=NamedSharding(mesh, P()))
  results = []
  for batch in feeding.prefetch_to_device(iter([next(iterator) for _ in range(3)]), sharding):
    assert batch["image"].shape == (48, 28, 28, 1), batch["image"].shape
    ids, weighted = total(batch)
    results.append([int(ids), float(weighted)])
  if jax.process_index() == 0:
    with open(out, "w") as f:
      json.dump(results, f)


if __name__ == "__main__":
  main()
