#!/usr/bin/env bash
# Sets up deit-jax on a fresh machine: Debian's Fashion-MNIST (the embedded default
# dataset), a virtual environment in .venv and the package in editable mode.
#
#   bash launch/setup.sh            # the package (enough to train)
#   bash launch/setup.sh test,torch # plus the test and PyTorch/timm extras
#   bash launch/setup.sh tpu        # libtpu: TPU VMs, and compiling for TPU slices anywhere
#   bash launch/setup.sh cuda       # jax's CUDA 12 plugin: GPU nodes
#
# Versions are pinned by launch/constraints.txt (CPython 3.11, 3.12 or 3.13 on Linux
# x86_64): every machine, and every re-run next month, gets the same jax, flax, orbax and
# TensorFlow. DEIT_JAX_CONSTRAINTS=FILE pins with another file; DEIT_JAX_CONSTRAINTS= (empty)
# installs the newest releases setup.cfg allows. PYTHON picks the interpreter (python3),
# DEIT_JAX_VENV the environment (.venv); DEIT_JAX_LIST_DEVICES=0 skips listing the devices.
#
# Safe to re-run: every step is skipped when already done (pip too, when nothing it would
# install has changed), and an environment installed with other versions is brought to the
# pinned ones.
set -euo pipefail

extras="${1:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DEIT_JAX_VENV:-$root/.venv}"
fmnist="/usr/share/datasets/fashion-mnist"

say() { printf '[setup] %s\n' "$*"; }

constraints="${DEIT_JAX_CONSTRAINTS-$root/launch/constraints.txt}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: deit-jax needs Python >= 3.11; '$python' is $("$python" --version 2>&1)" >&2
  exit 1
fi
if [[ -n "$constraints" ]] &&
   ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] > (3, 13))' 2>/dev/null; then
  echo "error: launch/constraints.txt pins wheels for Python 3.11-3.13; '$python' is" \
       "$("$python" --version 2>&1) (set PYTHON=python3.12, or DEIT_JAX_CONSTRAINTS= to" \
       "install unpinned releases)" >&2
  exit 1
fi
[[ -z "$constraints" || -f "$constraints" ]] || {
  echo "error: no constraints file $constraints (DEIT_JAX_CONSTRAINTS)" >&2; exit 1; }
pin=()
[[ -n "$constraints" ]] && pin=(-c "$constraints")

# Debian packages: the Fashion-MNIST files (the default dataset) and, with the test extra,
# the shellcheck linter (tests/test_launch.py runs it on launch/*.sh).
packages=()
[[ -f "$fmnist/train-images-idx3-ubyte.gz" ]] || packages+=(dataset-fashion-mnist)
[[ ",$extras," == *,test,* ]] && ! command -v shellcheck >/dev/null && packages+=(shellcheck)
if [[ ${#packages[@]} -gt 0 ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian's ${packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    say "warning: apt-get unavailable (not root?): 'apt-get install ${packages[*]}' is" \
        "needed (dataset-fashion-mnist: the default dataset; shellcheck: the launcher tests)"
  fi
fi

if [[ ! -x "$venv/bin/python" ]]; then
  # A first install needs room: ~3 GiB for the package, ~9 GiB with the torch extra (pip on
  # Linux x86_64 takes torch's CUDA build, its NVIDIA libraries ~4 GiB). Say so up front
  # instead of failing half-way with pip's "No space left on device".
  need_gib=3
  [[ ",$extras," == *,torch,* ]] && need_gib=9
  parent="$(dirname "$venv")"
  free_gib=$(( $(df -Pk "$parent" | awk 'NR == 2 {print $4}') / 1048576 ))
  if (( free_gib < need_gib )); then
    echo "error: $free_gib GiB free on the disk of $parent; the environment" \
         "${extras:+with extras [$extras] }needs about $need_gib GiB (set DEIT_JAX_VENV" \
         "to a roomier place, or free some space)" >&2
    exit 1
  fi
  say "creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
# pip's output is shown only when it fails (its exit status is kept).
pip_quiet() {
  local log
  log="$(mktemp)"
  if ! "$venv/bin/python" -m pip --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -n 40 >&2
    rm -f "$log"
    echo "error: pip $* failed (output above)" >&2
    return 1
  fi
  rm -f "$log"
}
# What the last successful install was made from: the pins, setup.cfg, the extras, the
# checkout, the interpreter, and every installed distribution with its version (the
# *.dist-info names). When all match, pip has nothing to do: it is skipped (pip would
# spend ~40 s asking the package index to confirm that). Pinned installs only.
stamp="$venv/.deit_jax_setup"
fingerprint() {
  {
    printf '%s\n' "$extras" "$root"
    "$venv/bin/python" --version 2>&1
    cat "$constraints" "$root/setup.cfg" "$root/pyproject.toml"
    find "$venv"/lib/python3*/site-packages -maxdepth 1 -name '*.dist-info' -printf '%f\n' |
      sort
  } | sha256sum | cut -d' ' -f1
}
if [[ -n "$constraints" && -f "$stamp" && "$(cat "$stamp")" == "$(fingerprint)" ]]; then
  say "deit_jax${extras:+[$extras]} already installed as pinned (nothing changed since)"
else
  rm -f "$stamp"
  pip_quiet install ${pin[@]+"${pin[@]}"} --upgrade pip
  target="$root"
  [[ -n "$extras" ]] && target="${root}[$extras]"
  pinned="${constraints:+ pinned by ${constraints#"$root"/}}"
  say "installing deit_jax${extras:+[$extras]}$pinned (first run: a few minutes)"
  pip_quiet install ${pin[@]+"${pin[@]}"} -e "$target"
  if [[ -n "$constraints" ]]; then fingerprint > "$stamp"; fi
fi
devices="jax.devices()"
[[ ${DEIT_JAX_LIST_DEVICES:-1} == 0 ]] && devices="'not listed'"
"$venv/bin/python" -c "import deit_jax, jax; print('[setup] deit_jax', deit_jax.__version__, \
'| jax', jax.__version__, '| devices:', $devices)"
