"""deit_jax.processes: the arguments of jax.distributed.initialize and the device-count check,
from the process flags and a cluster's environment (fake SLURM variables; nothing starts)."""

import pytest

from deit_jax import processes
from deit_jax.errors import UserError

# What srun gives task 2 of 4, one task per node, on nodes of 8 GPUs.
ONE_PER_NODE = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="gpu[1-4]", SLURM_NTASKS="4",
                    SLURM_PROCID="2", SLURM_LOCALID="0", SLURM_NODEID="2",
                    SLURM_STEP_TASKS_PER_NODE="1(x4)", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")
# One task per GPU: 32 tasks, 8 on each node.
ONE_PER_GPU = {**ONE_PER_NODE, "SLURM_NTASKS": "32", "SLURM_PROCID": "21",
               "SLURM_LOCALID": "5", "SLURM_STEP_TASKS_PER_NODE": "8(x4)"}


def test_explicit_process_flags_turn_cluster_detection_off():
  # launch/gpu_multinode.sh's srun task: without this, JAX's SLURM detection would hand the
  # process GPU SLURM_LOCALID (= 0) only
  assert processes.distributed_kwargs("gpu1:1234", 4, 2, False, ONE_PER_NODE) == dict(
      coordinator_address="gpu1:1234", num_processes=4, process_id=2,
      cluster_detection_method="deactivate")
  with pytest.raises(UserError, match="needs --num_processes and --process_id"):
    processes.distributed_kwargs("gpu1:1234", None, 0, False, {})


def test_multihost_under_slurm_names_every_gpu_of_a_one_task_node():
  kwargs = lambda env: processes.distributed_kwargs(None, None, None, True, env)
  assert kwargs(ONE_PER_NODE) == {"local_device_ids": [0, 1, 2, 3, 4, 5, 6, 7]}
  # GPUs 4-7 of a shared node: CUDA numbers the visible ones 0-3
  assert kwargs({**ONE_PER_NODE, "CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == {
      "local_device_ids": [0, 1, 2, 3]}
  no_list = {k: v for k, v in ONE_PER_NODE.items() if k != "CUDA_VISIBLE_DEVICES"}
  assert kwargs({**no_list, "SLURM_GPUS_ON_NODE": "8"}) == {"local_device_ids": list(range(8))}
  # JAX's own choice is right for one task per GPU, TPU pods, and unknown GPU counts
  assert kwargs(ONE_PER_GPU) == kwargs({}) == kwargs(no_list) == {}
  assert processes.distributed_kwargs(None, None, None, False, ONE_PER_NODE) is None


@pytest.mark.parametrize("env, tasks", [
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "1"}, 2),
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "3"}, 1),
    ({"SLURM_TASKS_PER_NODE": "4", "SLURM_NODEID": "0"}, 4),
    ({"SLURM_NTASKS_PER_NODE": "8"}, 8),
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x3)", "SLURM_NODEID": "5"}, None),
    ({"SLURM_STEP_TASKS_PER_NODE": "two"}, None),
    ({}, None),
])
def test_tasks_on_this_node(env, tasks):
  assert processes.slurm_tasks_on_node(env) == tasks


def test_a_gpu_process_with_the_wrong_device_count_gets_one_line():
  problem = processes.device_count_problem("gpu", 1, ONE_PER_NODE)
  assert problem.startswith("this process drives 1 GPU(s), but 8 are visible to the 1 "
                            "process(es) on this node, i.e. 8 each: launch with ")
  assert "\n" not in problem
  assert processes.device_count_problem("gpu", 8, ONE_PER_NODE) is None
  assert processes.device_count_problem("gpu", 1, ONE_PER_GPU) is None
  assert "i.e. 1 each" in processes.device_count_problem("gpu", 8, ONE_PER_GPU)
  # plain hosts: one process per host, all of CUDA_VISIBLE_DEVICES
  assert processes.device_count_problem("gpu", 2, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
  # not questioned: the user's own JAX_LOCAL_DEVICE_IDS, TPUs, environments that don't say
  assert processes.device_count_problem(
      "gpu", 1, {**ONE_PER_NODE, "JAX_LOCAL_DEVICE_IDS": "0"}) is None
  assert processes.device_count_problem("tpu", 4, ONE_PER_NODE) is None
  for env in ({}, {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, {"CUDA_VISIBLE_DEVICES": ""}):
    assert processes.device_count_problem("gpu", 2, env) is None
