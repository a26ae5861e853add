"""How a process joins a multi-process job: the arguments of ``jax.distributed.initialize``
and the number of local devices to expect, from the process flags and the cluster
environment (pure functions of the flags and ``os.environ``; ``deit_jax.cli`` calls them).

One process drives all of its node's GPUs (``launch/gpu_multinode.sh``: one task per node).
JAX's own SLURM detection assumes one task per GPU: when ``local_device_ids`` is not given
it restricts each process to the GPU numbered ``SLURM_LOCALID``, i.e. GPU 0 with one task
per node (jax-ml/jax#16788; ``jax/_src/clusters/cluster.py``). So with explicit process
flags the detection is switched off, and with ``--multihost`` under SLURM with one task on
the node every visible GPU is named.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from deit_jax.errors import UserError

# What JAX's SlurmCluster needs to call a process part of an srun step.
_SLURM_STEP = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


def distributed_kwargs(coordinator_address: str | None, num_processes: int | None,
                       process_id: int | None, multihost: bool,
                       environ: Mapping[str, str] = os.environ) -> dict | None:
  """Keyword arguments for ``jax.distributed.initialize``, or None for a single process."""
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise UserError("--coordinator_address needs --num_processes and --process_id")
    # Every argument given: no cluster detection, so no SLURM/Open MPI variable narrows the
    # process to one GPU; all of the host's devices (or JAX_LOCAL_DEVICE_IDS) stay visible.
    return dict(coordinator_address=coordinator_address, num_processes=num_processes,
                process_id=process_id, cluster_detection_method="deactivate")
  if not multihost:
    return None
  gpus = visible_gpus(environ)
  if in_slurm_step(environ) and slurm_tasks_on_node(environ) == 1 and gpus:
    # CUDA renumbers the visible GPUs 0..n-1: these are the ids JAX's client takes.
    return dict(local_device_ids=list(range(gpus)))
  return {}  # TPU pods, or one SLURM task per GPU: JAX's detection is right


def in_slurm_step(environ: Mapping[str, str] = os.environ) -> bool:
  return all(key in environ for key in _SLURM_STEP)


def visible_gpus(environ: Mapping[str, str] = os.environ) -> int | None:
  """GPUs this process may use by its environment (CUDA_VISIBLE_DEVICES, else SLURM's
  SLURM_GPUS_ON_NODE), or None when the environment does not say."""
  listed = environ.get("CUDA_VISIBLE_DEVICES")
  if listed is not None:
    entries = [e for e in listed.split(",") if e.strip() and e.strip() != "NoDevFiles"]
    return len(entries) or None
  count = environ.get("SLURM_GPUS_ON_NODE", "")
  return int(count) if count.isdigit() and int(count) > 0 else None


def slurm_tasks_on_node(environ: Mapping[str, str] = os.environ) -> int | None:
  """Tasks of this srun step on this node, from SLURM_STEP_TASKS_PER_NODE (e.g. "2(x3),1":
  2 on each of the first three nodes, 1 on the fourth) and SLURM_NODEID."""
  spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
  node = environ.get("SLURM_NODEID", "0")
  if spec and node.isdigit():
    counts = []
    for part in spec.split(","):
      m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
      if m is None:
        return None
      counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[int(node)] if int(node) < len(counts) else None
  per_node = environ.get("SLURM_NTASKS_PER_NODE", "")
  return int(per_node) if per_node.isdigit() else None


def expected_local_devices(environ: Mapping[str, str] = os.environ) -> int | None:
  """GPUs each process on this node should drive: the visible GPUs shared by the node's
  tasks (one task outside SLURM), or None when the environment does not tell."""
  gpus = visible_gpus(environ)
  tasks = slurm_tasks_on_node(environ) if in_slurm_step(environ) else 1
  if not gpus or not tasks or gpus % tasks:
    return None
  return gpus // tasks


def device_count_problem(platform: str, local_devices: int,
                         environ: Mapping[str, str] = os.environ) -> str | None:
  """One line when a GPU process drives another number of GPUs than its environment
  grants it (e.g. 1 of a node's 8), else None. An explicit JAX_LOCAL_DEVICE_IDS is the
  user's choice and never questioned."""
  if platform != "gpu" or "JAX_LOCAL_DEVICE_IDS" in environ:
    return None
  expected = expected_local_devices(environ)
  if expected is None or expected == local_devices:
    return None
  tasks = slurm_tasks_on_node(environ) if in_slurm_step(environ) else 1
  return (f"this process drives {local_devices} GPU(s), but {visible_gpus(environ)} are "
          f"visible to the {tasks} process(es) on this node, i.e. {expected} each: launch "
          "with launch/gpu_multinode.sh (one process per node, all its GPUs) or one SLURM "
          "task per GPU, or set JAX_LOCAL_DEVICE_IDS to choose the GPUs yourself")
