"""Host batches -> global jax.Arrays on the mesh, prefetched ahead of the train step."""

from __future__ import annotations

import collections
import itertools
from typing import Iterable, Iterator

import jax
import numpy as np


def to_global(batch: dict[str, np.ndarray],
              sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
  """Assembles every process's local slice into one global array per key.

  ``sharding`` shards the leading (batch) axis over the mesh's data axes; process p's
  local arrays are rows [p*B/P, (p+1)*B/P) of the global batch, as the pipeline made them.
  """
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_device(batches: Iterable[dict[str, np.ndarray]],
                       sharding: jax.sharding.NamedSharding,
                       size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Keeps ``size`` batches in flight on the devices so input transfer overlaps compute."""
  queue = collections.deque()
  iterator = iter(batches)

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(to_global(batch, sharding))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
