"""One process of tests/test_storage_faults.py: reads this process's share of the first
train batches of a dataset on the GCS stand-in (the environment points the clients there)
and writes each batch's SHA-256 and the corrupt examples skipped to a JSON file. A read
that fails past every retry ends it with the trainer's one-line error.

    python tests/storage_worker.py DATA_DIR PROCESS_INDEX PROCESS_COUNT STEPS OUT.json
"""

import hashlib
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from deit_jax import cli  # noqa: E402
from deit_jax.data import pipeline, sources  # noqa: E402

DATASET = "deit_jax_bench_jpegs"
GLOBAL_BATCH = 16


def main(data_dir: str, index: int, count: int, steps: int, out: str) -> None:
  source = sources.open_source(DATASET, "train", data_dir=data_dir)
  config = pipeline.AugmentConfig(image_size=32, crop="pad_crop", pad=2, hflip=True,
                                  repeated_aug=1, mean=(0.5,) * 3, std=(0.25,) * 3)
  host = pipeline.HostSlice(GLOBAL_BATCH, index, count)
  iterator = pipeline.TrainIterator(source, config, host, seed=3)
  digests = []
  for batch in itertools.islice(iterator, steps):
    digest = hashlib.sha256()
    for key in sorted(batch):
      digest.update(batch[key].tobytes())
    digests.append(digest.hexdigest())
  with open(out, "w") as f:
    json.dump({"digests": digests, "skipped": iterator.skipped}, f)


if __name__ == "__main__":
  with cli.one_line_errors():
    data_dir, index, count, steps, out = sys.argv[1:]
    main(data_dir, int(index), int(count), int(steps), out)
