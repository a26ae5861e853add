"""Host batches -> global jax.Arrays on the mesh, prefetched ahead of the train step; the
train and eval streams of a run with its teacher joined (``deit_jax.teacher.feed``)."""

from __future__ import annotations

import collections
import itertools
from typing import Iterable, Iterator

import jax
import numpy as np

from deit_jax.data import pipeline, sources
from deit_jax.sharding import batch_sharding


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


def train_batches(source, augment, host: pipeline.HostSlice, mesh, teacher, *, seed: int,
                  start_step: int):
  """Device batches of the train stream from ``start_step``, joined with the teacher, and
  the host iterator behind them (its ``skipped`` count of corrupt examples)."""
  iterator = pipeline.TrainIterator(source, augment, host, seed=seed, start_step=start_step,
                                    views=teacher.views)
  return prefetch_to_device(map(teacher.join, iterator), batch_sharding(mesh)), iterator


def eval_batches(source, augment, host: pipeline.HostSlice, mesh, teacher):
  """Device batches of one pass over ``source`` (padded, masked), joined with the
  (evaluation) teacher."""
  batches = sources.checked(pipeline.eval_dataset(source, augment, host).as_numpy_iterator(),
                            source)
  return prefetch_to_device(map(teacher.join, batches), batch_sharding(mesh))
