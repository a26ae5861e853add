#!/usr/bin/env bash
# Cloud TPU VMs for deit-jax: create a TPU VM (one host or a pod slice), ship the repository
# to every worker, precompute teacher logits and train on all workers at once, follow the
# logs, stop, delete.
#
#   launch/tpu_vm.sh SUBCOMMAND [options] [--config.key=value ...] [-- deit_jax flags]
#   launch/tpu_vm.sh create --name=deit --zone=us-central2-b --accelerator=v4-32 --spot
#   launch/tpu_vm.sh train  --name=deit --zone=us-central2-b --bucket=my-bucket
#
# `--help` lists every setting, its environment fallback and default; `--dry-run` prints
# each command (copy-pastable) instead of running it. Commands on all workers run ssh on
# each at once: a key with a passphrase must sit in an ssh agent (the script says so).
set -euo pipefail

prog=${0##*/}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "$prog: error: $*" >&2; exit 2; }
warn() { echo "$prog: warning: $*" >&2; }
truthy() { [[ ${1:-} =~ ^(1|true|yes)$ ]]; }

usage() {
  cat <<EOF
usage: $prog SUBCOMMAND [options] [--config.key=value ...] [-- deit_jax.main or precompute flags...]

subcommands:
  create      create the TPU VM (through a queued resource of the same name with --queued)
  setup       ship this checkout's HEAD (git archive; uncommitted changes stay here) or clone
              --repo to ~/deit-jax on every worker, install deit_jax[EXTRAS] there with
              launch/setup.sh (versions pinned by launch/constraints.txt) and print
              jax.device_count() from every worker
  stage       copy the prepared dataset from --data-dir (the bucket) to --local-data-dir on
              every worker under nohup ('python -m deit_jax.data.stage'), log in
              ~/deit-jax/logs/stage_<hostname>.log; train then reads the local copy (the
              bucket feeds a few percent of the step rate: docs/data.md); running it again
              finishes an interrupted copy
  precompute  start 'python -m deit_jax.teacher precompute --multihost' on every worker
              under nohup: the teacher --teacher over the train split into --logits, log in
              ~/deit-jax/logs/precompute_<hostname>.log; running it again resumes (finished
              shards are kept)
  train       start 'python -m deit_jax.main --multihost' on every worker under nohup, log
              in ~/deit-jax/logs/train_<hostname>.log; running it again after a stop, a
              crash or a maintenance reboot resumes from WORKDIR/checkpoints
  logs        tail -F the newest log (train or precompute) of --worker
  ssh         a shell on --worker, or run the command given after '--' there
  stop        SIGTERM the jobs (a trainer saves a checkpoint and exits), wait up to
              --stop-timeout seconds, then SIGKILL what is left
  status      the TPU's state and the workers where a job is alive
  delete      delete the TPU VM (and its queued resource with --queued); 'stop' first
precompute and train refuse unless the TPU is READY and no worker runs a job.

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
  --autocheckpoint   DEIT_TPU_AUTOCHECKPOINT=1  create: SIGTERM the jobs before maintenance
                                           (gcloud alpha, --autocheckpoint-enabled)
  --bucket B         DEIT_TPU_BUCKET       GCS bucket for data and runs (train; B or gs://B)
  --data-dir DIR     DEIT_TPU_DATA_DIR     gs://B/tensorflow_datasets (the trainer's TFDS_DATA_DIR)
  --local-data-dir D DEIT_TPU_LOCAL_DATA_DIR  stage: where each worker keeps its copy; train:
                                           read it instead of --data-dir (unset: the bucket)
  --dataset NAME     DEIT_TPU_DATASET      imagenet2012 (stage: the TFDS dataset to copy)
  --config FILE      DEIT_TPU_CONFIG       configs/deit_base.py (path inside the repository;
                                           precompute: configs/regnety_160_teacher.py
                                           unless --config is given)
  --workdir DIR      DEIT_TPU_WORKDIR      gs://B/deit-jax/<config file name without .py>
  --teacher PATH     DEIT_TPU_TEACHER      gs://B/models/regnety_160 (precompute: the teacher,
                                           a model directory written by deit_jax.convert)
  --logits DIR       DEIT_TPU_LOGITS       gs://B/teacher_logits/regnety160 (precompute: out)
  --env KEY=VALUE                          more environment for the trainer (repeatable)
  --repo URL         DEIT_TPU_REPO         setup: git clone URL instead of shipping HEAD
  --ref REF          DEIT_TPU_REF          setup --repo: branch, tag or commit (default branch)
  --python P         DEIT_TPU_PYTHON       python3.11 (apt-installed on the workers if missing)
  --extras E         DEIT_TPU_EXTRAS       tpu (pip extras of deit_jax)
  --worker W         DEIT_TPU_WORKER       0 (logs and ssh; 'all' or an index)
  --stop-timeout S   DEIT_TPU_STOP_TIMEOUT 600 (stop: seconds to wait before SIGKILL)
  --internal-ip      DEIT_TPU_INTERNAL_IP=1  ssh/scp over internal IPs (from inside the VPC)
  --dry-run          DEIT_TPU_DRY_RUN=1    print the commands instead of running them
  -h, --help
--config.key=value arguments and everything after '--' go to deit_jax.main (train) or
deit_jax.teacher precompute (precompute, e.g. -- --storage=topk), or form the command (ssh).
EOF
}

name=${DEIT_TPU_NAME:-} zone=${DEIT_TPU_ZONE:-} project=${DEIT_TPU_PROJECT:-}
accelerator=${DEIT_TPU_ACCELERATOR:-v4-32} version=${DEIT_TPU_VERSION:-}
bucket=${DEIT_TPU_BUCKET:-} data_dir=${DEIT_TPU_DATA_DIR:-} workdir=${DEIT_TPU_WORKDIR:-}
local_data_dir=${DEIT_TPU_LOCAL_DATA_DIR:-} dataset=${DEIT_TPU_DATASET:-imagenet2012}
config=${DEIT_TPU_CONFIG:-configs/deit_base.py} repo=${DEIT_TPU_REPO:-} ref=${DEIT_TPU_REF:-}
python=${DEIT_TPU_PYTHON:-python3.11} extras=${DEIT_TPU_EXTRAS:-tpu}
worker=${DEIT_TPU_WORKER:-0} teacher=${DEIT_TPU_TEACHER:-} logits=${DEIT_TPU_LOGITS:-}
stop_timeout=${DEIT_TPU_STOP_TIMEOUT:-600}
spot=0 preemptible=0 queued=0 autocheckpoint=0 internal_ip=0 dry_run=0 config_given=0
truthy "${DEIT_TPU_SPOT:-}" && spot=1
truthy "${DEIT_TPU_AUTOCHECKPOINT:-}" && autocheckpoint=1
truthy "${DEIT_TPU_PREEMPTIBLE:-}" && preemptible=1
truthy "${DEIT_TPU_QUEUED:-}" && queued=1
truthy "${DEIT_TPU_INTERNAL_IP:-}" && internal_ip=1
truthy "${DEIT_TPU_DRY_RUN:-}" && dry_run=1

value_options=" name zone project accelerator version bucket data_dir config workdir env "
value_options+="repo ref python extras worker teacher logits stop_timeout local_data_dir dataset "
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
    --autocheckpoint) autocheckpoint=1 ;;
    --internal-ip) internal_ip=1 ;;
    --dry-run) dry_run=1 ;;
    --config.*) passthrough+=("$arg") ;;  # a config override, not the config file
    --*)
      key=${arg%%=*}
      var=${key#--}
      var=${var//-/_}  # --data-dir sets data_dir
      case $key in
        --spot | --preemptible | --queued | --autocheckpoint | --internal-ip | --dry-run)
          die "$key takes no value" ;;
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
      [[ $var == config ]] && config_given=1
      ;;
    -*) die "unknown option $arg (see $prog --help)" ;;
    *) [[ -z $subcommand ]] || die "unexpected argument '$arg' (use '--' before a command)"
       subcommand=$arg ;;
  esac
done

subcommands="create, setup, stage, precompute, train, logs, ssh, stop, status or delete"
case $subcommand in
  create | setup | stage | precompute | train | logs | ssh | stop | status | delete) ;;
  "") die "missing subcommand: $subcommands (see --help)" ;;
  *) die "unknown subcommand '$subcommand': use $subcommands" ;;
esac
[[ -n $name ]] || die "missing --name (or DEIT_TPU_NAME): the TPU VM's name"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "bad TPU name '$name': lower-case letters, digits and '-'"
[[ -n $zone ]] || die "missing --zone (or DEIT_TPU_ZONE), e.g. us-central2-b"
[[ $worker =~ ^(all|[0-9]+)$ ]] || die "bad --worker '$worker': 'all' or a worker index"
[[ $stop_timeout =~ ^[0-9]+$ ]] || die "bad --stop-timeout '$stop_timeout': seconds"
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

# --worker=all runs one ssh per worker at once: a key with a passphrase would be asked for
# by each of them, prompts interleaved, unless an ssh agent holds it. Said once, first.
agent_hint() {
  local key=$HOME/.ssh/google_compute_engine
  ((dry_run)) && return 0
  [[ -f $key ]] && command -v ssh-keygen >/dev/null || return 0
  ssh-keygen -y -P '' -f "$key" >/dev/null 2>&1 && return 0  # no passphrase
  local fingerprint
  fingerprint=$(ssh-keygen -l -f "$key.pub" 2>/dev/null | awk '{print $2}')
  [[ -n $fingerprint ]] && ssh-add -l 2>/dev/null | grep -qF "$fingerprint" && return 0
  warn "$key has a passphrase and no ssh agent holds it, so every worker asks for it:" \
    "first run  eval \"\$(ssh-agent -s)\" && ssh-add $key"
}

# Matches the jobs (".venv/bin/python -m deit_jax.main ..." or "... -m deit_jax.teacher
# precompute ...") but not the remote shell running these commands, whose command line
# starts with "bash".
jobs="'^[^ ]*python[^ ]* -m deit_jax[.](main|teacher|data[.]stage) '"
alive_cmd="if p=\$(pgrep -af $jobs); then echo ALIVE:\$(hostname) \$(echo \"\$p\" | grep -o ' deit_jax[.][a-z.]*' | head -n 1)"
alive_cmd+="; else echo idle:\$(hostname); fi"

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
  local capacity=() tpus=(gcloud compute tpus)
  ((spot)) && capacity=(--spot)
  ((preemptible)) && capacity=(--preemptible)
  # Autocheckpoint (a preview feature, so gcloud alpha): before a maintenance event Cloud TPU
  # SIGTERMs the processes using the TPU and waits for them to exit; the trainer saves a
  # checkpoint on SIGTERM (https://cloud.google.com/tpu/docs/autocheckpoint).
  ((autocheckpoint)) && tpus=(gcloud alpha compute tpus) && capacity+=(--autocheckpoint-enabled)
  if ((queued)); then
    ((preemptible)) && die "--preemptible does not combine with --queued (use --spot)"
    run "${tpus[@]}" queued-resources create "$name" --node-id="$name" "${gflags[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" "${capacity[@]}"
    echo "# then wait for state ACTIVE: gcloud compute tpus queued-resources describe $name --zone=$zone"
  else
    run "${tpus[@]}" tpu-vm create "$name" "${gflags[@]}" \
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
  # launch/setup.sh: the venv, and the pinned versions of launch/constraints.txt.
  tpu_ssh all "$(statements "set -e" "$fetch_cmd" "cd ~/deit-jax" \
    "if ! $py -c 'import ensurepip' 2>/dev/null; then sudo apt-get -qq update; $apt $apt_py $apt_py-venv; fi" \
    "PYTHON=$py DEIT_JAX_LIST_DEVICES=0 bash launch/setup.sh $(quote "$extras")")"
  # Every worker at once: on a pod slice the TPU runtime waits for all of them.
  local check="import jax; jax.distributed.initialize(); d = jax.devices()"
  check+="; print(f\"deit-jax: process {jax.process_index()}/{jax.process_count()}: \""
  check+=" f\"{jax.local_device_count()} local, {jax.device_count()} global {d[0].platform} devices\")"
  check+="; assert d[0].platform == \"tpu\", \"no TPU devices\""
  tpu_ssh all "cd ~/deit-jax && .venv/bin/python -c '$check'"
}

# gs://BUCKET's defaults for train and precompute.
bucket_defaults() {
  bucket=${bucket#gs://}
  bucket=${bucket%/}
  [[ -z $bucket || $bucket =~ ^[a-z0-9][-a-z0-9_.]*$ ]] || die "bad bucket name '$bucket'"
  [[ -n $bucket ]] || return 0
  data_dir=${data_dir:-gs://$bucket/tensorflow_datasets}
  workdir=${workdir:-gs://$bucket/deit-jax/$(basename "$config" .py)}
  teacher=${teacher:-gs://$bucket/models/regnety_160}
  logits=${logits:-gs://$bucket/teacher_logits/regnety160}
}

train() {
  bucket_defaults
  [[ -n $data_dir && -n $workdir ]] ||
    die "missing --bucket (or DEIT_TPU_BUCKET), or both --data-dir and --workdir"
  [[ $workdir == gs://* ]] ||
    die "--workdir must be gs://...: every worker writes the same checkpoints, and preemption loses the VM's disk"
  local read=()
  [[ -z $local_data_dir ]] || read=(--config.data_dir="$local_data_dir")  # the staged copy
  launch train deit_jax.main "$(quote_all --config="$config" --workdir="$workdir" --multihost \
    "${read[@]}" "${passthrough[@]}")"
}

stage() {
  bucket_defaults
  [[ -n $data_dir ]] || die "missing --bucket (or DEIT_TPU_BUCKET), or --data-dir"
  [[ -n $local_data_dir && $local_data_dir != *://* ]] ||
    die "missing --local-data-dir (or DEIT_TPU_LOCAL_DATA_DIR): a directory on each worker's disk or RAM (/dev/shm/...)"
  launch stage deit_jax.data.stage "$(quote_all --dataset="$dataset" --data_dir="$data_dir" \
    --local_dir="$local_data_dir" "${passthrough[@]}")"
}

precompute() {
  ((config_given)) || config=configs/regnety_160_teacher.py
  bucket_defaults
  [[ -n $data_dir && -n $teacher && -n $logits ]] ||
    die "missing --bucket (or DEIT_TPU_BUCKET), or all of --data-dir, --teacher and --logits"
  [[ $logits == gs://* ]] || die "--logits must be gs://...: every worker writes its shards there"
  local model=(--checkpoint="$teacher") arg
  for arg in "${passthrough[@]}"; do  # -- --timm=NAME --timm_weights=FILE: timm's model
    [[ $arg == --timm=* ]] && model=()
  done
  launch precompute deit_jax.teacher "$(quote_all precompute --config="$config" \
    "${model[@]}" --split=train --out="$logits" --multihost "${passthrough[@]}")"
}

# The TPU must be READY: during maintenance or repair, or once preempted, ssh fails or hangs.
check_ready() {
  local describe=(gcloud compute tpus tpu-vm describe "$name" "${gflags[@]}" --format='value(state)')
  if ((dry_run)); then
    run "${describe[@]}"
    echo "# $subcommand stops here unless the state is READY"
    return
  fi
  local state
  state=$("${describe[@]}") || die "cannot read the state of TPU '$name' (gcloud's message above)"
  case $state in
    READY) ;;
    PREEMPTED | TERMINATED)
      die "TPU '$name' is $state: 'delete', 'create' and 'setup' it, then '$subcommand' again resumes" ;;
    *) die "TPU '$name' is ${state:-in no state}, not READY (maintenance or repair?): wait, then run '$subcommand' again" ;;
  esac
}

# launch JOB MODULE ARGS: 'python -m MODULE ARGS' on every worker under nohup (it outlives
# the ssh session), log in ~/deit-jax/logs/JOB_<hostname>.log. One job at a time per TPU.
launch() {
  local job=$1 module=$2 args=$3
  local env_words=(TFDS_DATA_DIR="$(quote "$data_dir")") kv
  for kv in "${extra_env[@]}"; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "bad --env '$kv': KEY=VALUE"
    env_words+=("${kv%%=*}=$(quote "${kv#*=}")")
  done
  check_ready
  # Refuse a second job: a worker with a live one would otherwise get another. A job alive
  # on some workers only is what a worker's reboot (maintenance) or crash leaves behind.
  if ((dry_run)); then
    tpu_ssh all "$alive_cmd"
    echo "# $job stops here if any worker printed ALIVE:<hostname>"
  else
    local answer alive idle
    answer=$(tpu_ssh all "$alive_cmd")
    alive=$(sed -n 's/.*ALIVE:\([^[:space:]]*\).*/\1/p' <<<"$answer" | tr '\n' ' ')
    idle=$(sed -n 's/.*idle:\([^[:space:]]*\).*/\1/p' <<<"$answer" | tr '\n' ' ')
    [[ -z $alive || -z $idle ]] ||
      die "a job runs on ${alive% } but not on ${idle% } (a worker rebooted or its process died): '$prog stop', then '$prog $job' again resumes"
    [[ -z $alive ]] ||
      die "a job is already running on ${alive% }: see '$prog status' and '$prog logs', or '$prog stop' it first"
  fi
  # The per-worker guard repeats the check in case two launches race.
  local start="${env_words[*]} nohup .venv/bin/python -m $module $args >> \$log 2>&1 < /dev/null &"
  tpu_ssh all "$(statements "cd ~/deit-jax || exit 1" \
    "[ -x .venv/bin/python ] || { echo \"no ~/deit-jax/.venv on \$(hostname): run '$prog setup' first\" >&2; exit 1; }" \
    "if pgrep -f $jobs >/dev/null; then echo \"a deit_jax job is already running on \$(hostname)\" >&2; exit 1; fi" \
    "mkdir -p logs" "log=logs/${job}_\$(hostname).log" "echo \"=== \$(date -u) $job\" >> \$log" \
    "$start echo \"$job pid \$! on \$(hostname), log ~/deit-jax/\$log\"")"
}

case $subcommand in
  setup | stage | precompute | train | stop | status) agent_hint ;;
  logs | ssh) [[ $worker != all ]] || agent_hint ;;
esac
case $subcommand in
  create) create ;;
  setup) setup ;;
  stage) stage ;;
  precompute) precompute ;;
  train) train ;;
  logs)
    tpu_ssh "$worker" "$(statements \
      "log=\$(ls -t ~/deit-jax/logs/*_\$(hostname).log 2>/dev/null | head -n 1)" \
      "[ -n \"\$log\" ] || { echo \"no logs on \$(hostname)\" >&2; exit 1; }" \
      "echo \"==> \$log\"" "tail -n 100 -F \"\$log\"")"
    ;;
  ssh)
    if [[ ${#passthrough[@]} -gt 0 ]]; then
      tpu_ssh "$worker" "${passthrough[*]}"
    else
      run gcloud compute tpus tpu-vm ssh "$name" "${gflags[@]}" "${ssh_flags[@]}" --worker="$worker"
    fi
    ;;
  stop)
    # A trainer saves a checkpoint on SIGTERM and exits; a precompute just exits (its
    # finished shards stay). What still runs after --stop-timeout seconds is killed.
    tpu_ssh all "$(statements \
      "if ! pkill -TERM -f $jobs; then echo \"nothing running on \$(hostname)\"; exit 0; fi" \
      "echo \"SIGTERM sent on \$(hostname), waiting up to $stop_timeout s for the checkpoint\"" \
      "for _ in \$(seq $stop_timeout); do pgrep -f $jobs >/dev/null || break; sleep 1; done" \
      "if pkill -KILL -f $jobs; then echo \"still running after $stop_timeout s on \$(hostname): SIGKILL sent (progress since the last checkpoint is lost)\" >&2; sleep 1; fi" \
      "echo \"stopped on \$(hostname)\"")"
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
