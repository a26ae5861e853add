#!/usr/bin/env bash
# Multi-node GPU training: one `python -m deit_jax.main` process per node, driving all of
# that node's GPUs, the processes joined by jax.distributed.initialize (process 0 is the
# coordinator).
#
# SLURM (the script runs srun itself: submit it with sbatch, or run it inside salloc; the
# coordinator is the first node of the allocation, the process id srun's SLURM_PROCID):
#   sbatch --nodes=4 --gpus-per-node=8 launch/gpu_multinode.sh \
#       --config=configs/deit_base.py --workdir=/shared/runs/deit_base
# Plain hosts (run on every host, the same command but for --process-id):
#   launch/gpu_multinode.sh --coordinator=host0:12345 --num-processes=2 --process-id=0 \
#       --config=configs/deit_base.py --workdir=gs://bucket/runs/deit_base
#
# Each process gets every CPU of its node (srun --cpus-per-task, --cpu-bind=none: the input
# pipeline's threads are not pinned to one core) and every GPU: deit_jax passes its process
# flags to jax.distributed.initialize with cluster detection off, since JAX's SLURM
# detection would give each process only GPU $SLURM_LOCALID (jax-ml/jax#16788); a process
# that still sees fewer GPUs than its node grants stops with one line.
#
# Set up every node with `bash launch/setup.sh cuda` (versions pinned by
# launch/constraints.txt). The workdir must be shared by all nodes (NFS, Lustre or gs://).
# Re-submitting the same command resumes from <workdir>/checkpoints; SIGTERM (SLURM sends it
# 5 minutes before the time limit, see --signal below) makes the trainer save a checkpoint
# and exit.
#
#SBATCH --job-name=deit-jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=TERM@300
#SBATCH --output=deit-jax-%j.log
set -euo pipefail

prog=gpu_multinode.sh  # not ${0##*/}: under sbatch $0 is slurmd's copy of this script
die() { echo "$prog: error: $*" >&2; exit 2; }

usage() {
  cat <<EOF
usage: $prog [options] [--] deit_jax.main flags...   (e.g. --config=FILE --workdir=DIR)

options (environment fallback, default):
  --coordinator HOST:PORT  DEIT_GPU_COORDINATOR    plain hosts: address of process 0
  --num-processes N        DEIT_GPU_NUM_PROCESSES  plain hosts: number of hosts
  --process-id I           DEIT_GPU_PROCESS_ID     plain hosts: this host's index, 0..N-1
  --port PORT              DEIT_GPU_PORT           12345 (SLURM: coordinator port on node 0)
  --dry-run                DEIT_GPU_DRY_RUN=1      print the command instead of running it
  -h, --help
Without the three plain-host options the script must run inside a SLURM job (sbatch or
salloc): it starts one process per node with srun. PYTHON (default <repo>/.venv/bin/python,
from 'bash launch/setup.sh cuda') is the interpreter on every node.
EOF
}

coordinator=${DEIT_GPU_COORDINATOR:-} num_processes=${DEIT_GPU_NUM_PROCESSES:-}
process_id=${DEIT_GPU_PROCESS_ID:-} port=${DEIT_GPU_PORT:-12345} dry_run=0
[[ ${DEIT_GPU_DRY_RUN:-} =~ ^(1|true|yes)$ ]] && dry_run=1

main_args=()
while [[ $# -gt 0 ]]; do
  arg=$1
  shift
  case $arg in
    --) main_args+=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --coordinator | --num-processes | --process-id | --port)
      [[ $# -gt 0 ]] || die "$arg needs a value"
      set -- "$arg=$1" "${@:2}"
      continue ;;
    --coordinator=*) coordinator=${arg#*=} ;;
    --num-processes=*) num_processes=${arg#*=} ;;
    --process-id=*) process_id=${arg#*=} ;;
    --port=*) port=${arg#*=} ;;
    *) main_args+=("$arg") ;;  # everything else is the trainer's
  esac
done
[[ ${#main_args[@]} -gt 0 ]] || die "no deit_jax.main flags given (at least --config and --workdir)"
[[ $port =~ ^[0-9]+$ ]] || die "bad --port '$port'"

# The repository: this script's parent, or (under sbatch, which runs a copy of the script)
# the directory sbatch was called from.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -d $here/deit_jax ]]; then root=$here; else root=${SLURM_SUBMIT_DIR:-$PWD}; fi
python="${PYTHON:-$root/.venv/bin/python}"
((dry_run)) || [[ -x $python ]] || die "no Python at $python: run 'bash launch/setup.sh cuda' or set PYTHON"

quote() {  # one shell word, single-quoted when needed (for --dry-run)
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
run() {
  if ((dry_run)); then
    local words=() w
    for w in "$@"; do words+=("$(quote "$w")"); done
    echo "${words[*]}"
  else
    exec "$@"
  fi
}

# First host of a SLURM node list. scontrol expands every form; the fallback handles the
# usual "prefix[01-04,07],other" lists (one bracket group) when scontrol is not installed.
first_node() {
  if command -v scontrol >/dev/null; then
    scontrol show hostnames "$1" | sed -n 1p
    return
  fi
  local re='^([^],[]+)(\[([^],[-]+))?'
  [[ $1 =~ $re ]] || die "cannot read the SLURM node list '$1'"
  printf '%s%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[3]}"
}

if [[ -n $coordinator || -n $num_processes || -n $process_id ]]; then
  # Plain hosts: this host's process, told everything on the command line.
  [[ -n $coordinator && -n $num_processes && -n $process_id ]] ||
    die "plain hosts need all of --coordinator, --num-processes and --process-id"
  [[ $coordinator =~ ^[^:[:space:]]+:[0-9]+$ ]] || die "bad --coordinator '$coordinator': HOST:PORT"
  [[ $num_processes =~ ^[1-9][0-9]*$ ]] || die "bad --num-processes '$num_processes'"
  [[ $process_id =~ ^[0-9]+$ && $process_id -lt $num_processes ]] ||
    die "bad --process-id '$process_id': 0..$((num_processes - 1))"
  run "$python" -m deit_jax.main --coordinator_address="$coordinator" \
    --num_processes="$num_processes" --process_id="$process_id" "${main_args[@]}"
elif [[ -n ${SLURM_JOB_ID:-} ]]; then
  nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}
  nodelist=${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}
  [[ $nodes =~ ^[1-9][0-9]*$ && -n $nodelist ]] ||
    die "SLURM_JOB_NUM_NODES/SLURM_JOB_NODELIST missing: run this under sbatch or salloc"
  head=$(first_node "$nodelist")
  # All of a node's CPUs for its one task: srun does not inherit sbatch's --cpus-per-task
  # (Slurm >= 22.05) and, with its default of 1, may bind the task to a single core. The
  # smallest node's count ("64(x3),32" -> 32), so that the step fits every node.
  cpus=()
  per_node=${SLURM_JOB_CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-}}
  if [[ $per_node =~ ^[0-9]+(\(x[0-9]+\))?(,[0-9]+(\(x[0-9]+\))?)*$ ]]; then
    fewest=$(tr ',' '\n' <<<"$per_node" | sed 's/(.*//' | sort -n | head -n 1)
    cpus=(--cpus-per-task="$fewest")
  fi
  # One task per node; each reads its own SLURM_PROCID, so the process id is expanded by
  # the task's shell, not here. A failing task ends the others (--kill-on-bad-exit).
  # shellcheck disable=SC2016
  run srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 "${cpus[@]}" --cpu-bind=none \
    --kill-on-bad-exit=1 \
    bash -c 'exec "$0" -m deit_jax.main --process_id="$SLURM_PROCID" "$@"' "$python" \
    --coordinator_address="$head:$port" --num_processes="$nodes" "${main_args[@]}"
else
  die "not in a SLURM job (no SLURM_JOB_ID): submit with sbatch, or pass --coordinator, --num-processes and --process-id"
fi
