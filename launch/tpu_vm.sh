#!/usr/bin/env bash
# Cloud TPU VMs for deit-jax: create a TPU VM (one host or a pod slice), ship the repository
# to every worker, train on all workers at once, follow the logs, stop, delete.
#
#   launch/tpu_vm.sh SUBCOMMAND [options] [--config.key=value ...] [-- deit_jax.main flags]
#   launch/tpu_vm.sh create --name=deit --zone=us-central2-b --accelerator=v4-32 --spot
#   launch/tpu_vm.sh train  --name=deit --zone=us-central2-b --bucket=my-bucket
#
# `--help` lists every setting, its environment fallback and default; `--dry-run` prints
# each command (copy-pastable) instead of running it.
set -euo pipefail

prog=${0##*/}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "$prog: error: $*" >&2; exit 2; }
warn() { echo "$prog: warning: $*" >&2; }
truthy() { [[ ${1:-} =~ ^(1|true|yes)$ ]]; }

usage() {
  cat <<EOF
usage: $prog SUBCOMMAND [options] [--config.key=value ...] [-- deit_jax.main flags...]

subcommands:
  create  create the TPU VM (through a queued resource of the same name with --queued)
  setup   ship this checkout's HEAD (git archive; uncommitted changes stay here) or clone
          --repo to ~/deit-jax on every worker, install deit_jax[EXTRAS] into
          ~/deit-jax/.venv and print jax.device_count() from every worker
  train   start 'python -m deit_jax.main --multihost' on every worker under nohup, log in
          ~/deit-jax/logs/train_<hostname>.log; refuses while a trainer is alive; running
          it again after a stop or a preemption resumes from WORKDIR/checkpoints
  logs    tail -F the trainer log of --worker
  ssh     a shell on --worker, or run the command given after '--' there
  stop    SIGTERM the trainers (each saves a checkpoint and exits) and wait for them
  status  the TPU's state and the workers where a trainer is alive
  delete  delete the TPU VM (and its queued resource with --queued); 'stop' first

options (environment fallback, default):
  --name NAME        DEIT_TPU_NAME         TPU name (required)
  --zone ZONE        DEIT_TPU_ZONE         e.g. us-central2-b (required)
  --project ID       DEIT_TPU_PROJECT      gcloud's configured project
  --accelerator T    DEIT_TPU_ACCELERATOR  v4-32 (also v4-8, v5e-64 = v5litepod-64, v5p-64, v6e-64...)
  --version V        DEIT_TPU_VERSION      by accelerator: v4 tpu-ubuntu2204-base, v5e
                                           v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --spot             DEIT_TPU_SPOT=1       spot capacity (cheaper; may be preempted)
  --preemptible      DEIT_TPU_PREEMPTIBLE=1  legacy preemptible TPU (not with --queued)
  --queued           DEIT_TPU_QUEUED=1     create/delete through a queued resource
  --bucket B         DEIT_TPU_BUCKET       GCS bucket for data and runs (train; B or gs://B)
  --data-dir DIR     DEIT_TPU_DATA_DIR     gs://B/tensorflow_datasets (the trainer's TFDS_DATA_DIR)
  --config FILE      DEIT_TPU_CONFIG       configs/deit_base.py (path inside the repository)
  --workdir DIR      DEIT_TPU_WORKDIR      gs://B/deit-jax/<config file name without .py>
  --env KEY=VALUE                          more environment for the trainer (repeatable)
  --repo URL         DEIT_TPU_REPO         setup: git clone URL instead of shipping HEAD
  --ref REF          DEIT_TPU_REF          setup --repo: branch, tag or commit (default branch)
  --python P         DEIT_TPU_PYTHON       python3.11 (apt-installed on the workers if missing)
  --extras E         DEIT_TPU_EXTRAS       tpu (pip extras of deit_jax)
  --worker W         DEIT_TPU_WORKER       0 (logs and ssh; 'all' or an index)
  --internal-ip      DEIT_TPU_INTERNAL_IP=1  ssh/scp over internal IPs (from inside the VPC)
  --dry-run          DEIT_TPU_DRY_RUN=1    print the commands instead of running them
  -h, --help
--config.key=value arguments and everything after '--' go to deit_jax.main (train), or
form the command (ssh).
EOF
}

name=${DEIT_TPU_NAME:-} zone=${DEIT_TPU_ZONE:-} project=${DEIT_TPU_PROJECT:-}
accelerator=${DEIT_TPU_ACCELERATOR:-v4-32} version=${DEIT_TPU_VERSION:-}
bucket=${DEIT_TPU_BUCKET:-} data_dir=${DEIT_TPU_DATA_DIR:-} workdir=${DEIT_TPU_WORKDIR:-}
config=${DEIT_TPU_CONFIG:-configs/deit_base.py} repo=${DEIT_TPU_REPO:-} ref=${DEIT_TPU_REF:-}
python=${DEIT_TPU_PYTHON:-python3.11} extras=${DEIT_TPU_EXTRAS:-tpu}
worker=${DEIT_TPU_WORKER:-0}
spot=0 preemptible=0 queued=0 internal_ip=0 dry_run=0
truthy "${DEIT_TPU_SPOT:-}" && spot=1
truthy "${DEIT_TPU_PREEMPTIBLE:-}" && preemptible=1
truthy "${DEIT_TPU_QUEUED:-}" && queued=1
truthy "${DEIT_TPU_INTERNAL_IP:-}" && internal_ip=1
truthy "${DEIT_TPU_DRY_RUN:-}" && dry_run=1

value_options=" name zone project accelerator version bucket data_dir config workdir env "
value_options+="repo ref python extras worker "
subcommand="" extra_env=() passthrough=()
while [[ $# -gt 0 ]]; do
  arg=$1
  shift
  case $arg in
    --) passthrough+=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    --spot) spot=1 ;;
    --preemptible) preemptible=1 ;;
    --queued) queued=1 ;;
    --internal-ip) internal_ip=1 ;;
    --dry-run) dry_run=1 ;;
    --config.*) passthrough+=("$arg") ;;  # a config override, not the config file
    --*)
      key=${arg%%=*}
      var=${key#--}
      var=${var//-/_}  # --data-dir sets data_dir
      case $key in
        --spot | --preemptible | --queued | --internal-ip | --dry-run) die "$key takes no value" ;;
      esac
      [[ $key =~ ^--[a-z]+(-[a-z]+)*$ && $value_options == *" $var "* ]] ||
        die "unknown option $key (see $prog --help)"
      if [[ $arg == *=* ]]; then
        value=${arg#*=}
      else
        [[ $# -gt 0 ]] || die "$key needs a value"
        value=$1
        shift
      fi
      if [[ $var == env ]]; then extra_env+=("$value"); else printf -v "$var" '%s' "$value"; fi
      ;;
    -*) die "unknown option $arg (see $prog --help)" ;;
    *) [[ -z $subcommand ]] || die "unexpected argument '$arg' (use '--' before a command)"
       subcommand=$arg ;;
  esac
done

case $subcommand in
  create | setup | train | logs | ssh | stop | status | delete) ;;
  "") die "missing subcommand: create, setup, train, logs, ssh, stop, status or delete (see --help)" ;;
  *) die "unknown subcommand '$subcommand': use create, setup, train, logs, ssh, stop, status or delete" ;;
esac
[[ -n $name ]] || die "missing --name (or DEIT_TPU_NAME): the TPU VM's name"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "bad TPU name '$name': lower-case letters, digits and '-'"
[[ -n $zone ]] || die "missing --zone (or DEIT_TPU_ZONE), e.g. us-central2-b"
[[ $worker =~ ^(all|[0-9]+)$ ]] || die "bad --worker '$worker': 'all' or a worker index"
((!dry_run)) && ! command -v gcloud >/dev/null &&
  die "gcloud not found: install the Google Cloud SDK, or use --dry-run"

# One word of shell: as it is when it needs no quoting, else in single quotes. Used both
# for the printed commands and for the values inside the remote --command strings.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
quote_all() {
  local words=() w
  for w in "$@"; do words+=("$(quote "$w")"); done
  printf '%s' "${words[*]}"
}
run() { if ((dry_run)); then quote_all "$@"; echo; else "$@"; fi; }
# A remote command line from its statements: "a; b; c" (one line, readable in --dry-run).
statements() { local out; printf -v out '%s; ' "$@"; printf '%s' "${out%; }"; }

gflags=(--zone="$zone")
[[ -n $project ]] && gflags+=(--project="$project")
ssh_flags=()
((internal_ip)) && ssh_flags+=(--internal-ip)
tpu_ssh() {  # tpu_ssh WORKER COMMAND
  run gcloud compute tpus tpu-vm ssh "$name" "${gflags[@]}" "${ssh_flags[@]}" \
    --worker="$1" --command="$2"
}

# Matches the trainer (".venv/bin/python -m deit_jax.main ...") but not the remote shell
# running these commands, whose command line starts with "bash".
trainer="'^[^ ]*python[^ ]* -m deit_jax[.]main'"
alive_cmd="pgrep -f $trainer >/dev/null && echo ALIVE:\$(hostname) || echo idle:\$(hostname)"

create() {
  [[ $accelerator == v5e-* ]] && accelerator=v5litepod-${accelerator#v5e-}  # gcloud's name
  if [[ -z $version ]]; then
    case $accelerator in
      v4-*) version=tpu-ubuntu2204-base ;;
      v5litepod-*) version=v2-alpha-tpuv5-lite ;;
      v5p-*) version=v2-alpha-tpuv5 ;;
      v6e-*) version=v2-alpha-tpuv6e ;;
      *) die "no default runtime version for accelerator '$accelerator': pass --version" ;;
    esac
  fi
  ((spot && preemptible)) && die "--spot and --preemptible exclude each other"
  local capacity=()
  ((spot)) && capacity=(--spot)
  ((preemptible)) && capacity=(--preemptible)
  if ((queued)); then
    ((preemptible)) && die "--preemptible does not combine with --queued (use --spot)"
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${gflags[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" "${capacity[@]}"
    echo "# then wait for state ACTIVE: gcloud compute tpus queued-resources describe $name --zone=$zone"
  else
    run gcloud compute tpus tpu-vm create "$name" "${gflags[@]}" \
      --accelerator-type="$accelerator" --version="$version" "${capacity[@]}"
  fi
}

setup() {
  local fetch_cmd
  if [[ -n $repo ]]; then
    fetch_cmd=$(statements \
      "if [ -e ~/deit-jax ] && [ ! -d ~/deit-jax/.git ]; then echo '~/deit-jax is not a git clone: remove it first' >&2; exit 1; fi" \
      "[ -d ~/deit-jax ] || git clone -q $(quote "$repo") ~/deit-jax" \
      "git -C ~/deit-jax fetch -q origin $(quote "${ref:-HEAD}")" \
      "git -C ~/deit-jax checkout -q --detach FETCH_HEAD")
  else
    [[ -z $ref ]] || die "--ref needs --repo (without it, setup ships this checkout's HEAD)"
    local sha tarball
    sha=$(git -C "$root" rev-parse --short HEAD 2>/dev/null) ||
      die "$root is not a git checkout: pass --repo URL"
    [[ -z $(git -C "$root" status --porcelain --untracked-files=no) ]] ||
      warn "uncommitted changes are not shipped: setup ships HEAD ($sha)"
    tarball="${TMPDIR:-/tmp}/deit-jax-$sha.tar.gz"
    run git -C "$root" archive --format=tar.gz --prefix=deit-jax/ -o "$tarball" HEAD
    run gcloud compute tpus tpu-vm scp "$tarball" "$name:deit-jax-src.tar.gz" "${gflags[@]}" \
      "${ssh_flags[@]}" --worker=all
    run rm -f "$tarball"
    # Over an earlier copy: .venv and logs/ are kept, files deleted since then are not removed.
    fetch_cmd="tar -xzf ~/deit-jax-src.tar.gz -C ~ && rm ~/deit-jax-src.tar.gz"
  fi
  local py apt_py
  py=$(quote "$python")
  apt_py=$(quote "${python##*/}")  # the TPU images' Ubuntu 22.04 has Python 3.10 only
  local apt="sudo DEBIAN_FRONTEND=noninteractive apt-get -qq install -y"
  tpu_ssh all "$(statements "set -e" "$fetch_cmd" "cd ~/deit-jax" \
    "if ! command -v $py >/dev/null; then sudo apt-get -qq update; $apt $apt_py $apt_py-venv; fi" \
    "[ -x .venv/bin/python ] || $py -m venv .venv" \
    ".venv/bin/python -m pip -q install --upgrade pip" \
    ".venv/bin/python -m pip -q install -e $(quote ".[$extras]")")"
  # Every worker at once: on a pod slice the TPU runtime waits for all of them.
  local check="import jax; jax.distributed.initialize(); d = jax.devices()"
  check+="; print(f\"deit-jax: process {jax.process_index()}/{jax.process_count()}: \""
  check+=" f\"{jax.local_device_count()} local, {jax.device_count()} global {d[0].platform} devices\")"
  check+="; assert d[0].platform == \"tpu\", \"no TPU devices\""
  tpu_ssh all "cd ~/deit-jax && .venv/bin/python -c '$check'"
}

train() {
  bucket=${bucket#gs://}
  bucket=${bucket%/}
  if [[ -z $bucket && (-z $data_dir || -z $workdir) ]]; then
    die "missing --bucket (or DEIT_TPU_BUCKET), or both --data-dir and --workdir"
  fi
  [[ -z $bucket || $bucket =~ ^[a-z0-9][-a-z0-9_.]*$ ]] || die "bad bucket name '$bucket'"
  local stem
  stem=$(basename "$config" .py)
  data_dir=${data_dir:-gs://$bucket/tensorflow_datasets}
  workdir=${workdir:-gs://$bucket/deit-jax/$stem}
  [[ $workdir == gs://* ]] ||
    die "--workdir must be gs://...: every worker writes the same checkpoints, and preemption loses the VM's disk"
  local env_words=(TFDS_DATA_DIR="$(quote "$data_dir")") kv
  for kv in "${extra_env[@]}"; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "bad --env '$kv': KEY=VALUE"
    env_words+=("${kv%%=*}=$(quote "${kv#*=}")")
  done
  local main_args
  main_args=$(quote_all --config="$config" --workdir="$workdir" --multihost "${passthrough[@]}")

  # Refuse a second run: a worker with a live trainer would otherwise get another one.
  if ((dry_run)); then
    tpu_ssh all "$alive_cmd"
    echo "# train stops here if any worker printed ALIVE:<hostname>"
  else
    local alive
    alive=$(tpu_ssh all "$alive_cmd" | sed -n 's/.*ALIVE:\([^[:space:]]*\).*/\1/p' | tr '\n' ' ')
    [[ -z $alive ]] ||
      die "a trainer is already running on ${alive% }: see '$prog logs', or '$prog stop' it first"
  fi
  # The per-worker guard repeats the check in case two launches race.
  local start="${env_words[*]} nohup .venv/bin/python -m deit_jax.main $main_args >> \$log 2>&1 < /dev/null &"
  tpu_ssh all "$(statements "cd ~/deit-jax || exit 1" \
    "[ -x .venv/bin/python ] || { echo \"no ~/deit-jax/.venv on \$(hostname): run '$prog setup' first\" >&2; exit 1; }" \
    "if pgrep -f $trainer >/dev/null; then echo \"a trainer is already running on \$(hostname)\" >&2; exit 1; fi" \
    "mkdir -p logs" "log=logs/train_\$(hostname).log" "echo \"=== \$(date -u) train\" >> \$log" \
    "$start echo \"trainer pid \$! on \$(hostname), log ~/deit-jax/\$log\"")"
}

case $subcommand in
  create) create ;;
  setup) setup ;;
  train) train ;;
  logs) tpu_ssh "$worker" "tail -n 100 -F ~/deit-jax/logs/train_\$(hostname).log" ;;
  ssh)
    if [[ ${#passthrough[@]} -gt 0 ]]; then
      tpu_ssh "$worker" "${passthrough[*]}"
    else
      run gcloud compute tpus tpu-vm ssh "$name" "${gflags[@]}" "${ssh_flags[@]}" --worker="$worker"
    fi
    ;;
  stop)
    # The trainer saves a checkpoint on SIGTERM; wait up to 10 minutes for it to exit.
    tpu_ssh all "$(statements \
      "if ! pkill -TERM -f $trainer; then echo \"no trainer running on \$(hostname)\"; exit 0; fi" \
      "echo \"SIGTERM sent on \$(hostname), waiting for the checkpoint\"" \
      "for _ in \$(seq 120); do pgrep -f $trainer >/dev/null || break; sleep 5; done" \
      "if pgrep -f $trainer >/dev/null; then echo \"trainer still running on \$(hostname)\" >&2; exit 1; fi" \
      "echo \"trainer stopped on \$(hostname)\"")"
    ;;
  status)
    ((queued)) && run gcloud compute tpus queued-resources describe "$name" "${gflags[@]}" \
      --format='value(state.state)'
    run gcloud compute tpus tpu-vm describe "$name" "${gflags[@]}" \
      --format='value(state,acceleratorType,runtimeVersion)'
    tpu_ssh all "$alive_cmd"
    ;;
  delete)
    if ((queued)); then
      run gcloud compute tpus queued-resources delete "$name" "${gflags[@]}" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$name" "${gflags[@]}" --quiet
    fi
    ;;
esac
