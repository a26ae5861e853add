#!/usr/bin/env bash
# Runs N processes of `python -m deit_jax.main` on this machine, talking over loopback
# with CPU collectives (gloo): the same multi-process code path as a TPU pod or a GPU
# cluster, for testing sharded input, checkpoints and resume without one.
#
#   launch/local_multihost.sh N [deit_jax.main flags...]
#   launch/local_multihost.sh 2 --config=configs/fashion_mnist_deit_tiny.py --workdir=/tmp/run
#
# Environment: DEIT_JAX_CPU_DEVICES (CPU devices per process, default 1), DEIT_JAX_PORT
# (coordinator port, default random), PYTHON (default .venv/bin/python). Process 0 prints
# to the terminal; process i>0 writes process_<i>.log in DEIT_JAX_LOG_DIR (default: the
# --workdir given, else the current directory).
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N [deit_jax.main flags...]   (N = number of processes)" >&2
  exit 2
fi
n=$1
shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
port="${DEIT_JAX_PORT:-$((20000 + RANDOM % 20000))}"
devices="${DEIT_JAX_CPU_DEVICES:-1}"
workdir=. previous=
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
  [[ "$previous" == --workdir ]] && workdir="$arg"
  previous="$arg"
done
[[ "$workdir" == gs://* ]] && workdir=.  # logs stay local
log_dir="${DEIT_JAX_LOG_DIR:-$workdir}"
mkdir -p "$log_dir"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup INT TERM
for ((i = 0; i < n; i++)); do
  args=(-m deit_jax.main "--coordinator_address=127.0.0.1:$port" "--num_processes=$n"
        "--process_id=$i" "--cpu_devices=$devices" "$@")
  if [[ $i -eq 0 ]]; then
    "$python" "${args[@]}" &
  else
    "$python" "${args[@]}" > "$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do
  wait "$pid" || rc=$?
done
exit "$rc"
