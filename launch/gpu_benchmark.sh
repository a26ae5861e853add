#!/usr/bin/env bash
# One-GPU benchmark (H100/H200) of deit_jax against timm, in under ~10 minutes:
# DeiT-S and DeiT-B (distilled), train and infer, bfloat16, --batch_size auto (each case's
# sizes tried in ascending order up to the first out-of-memory or a time budget), timm under
# torch.compile at the batch size our sweep picked. Needs JAX (CUDA), PyTorch and timm in
# ${PYTHON:-python3}; no TensorFlow, no pip install of this repository.
#
#   launch/gpu_benchmark.sh [--dry-run]
#
# Each case runs under `timeout` (a cut-off case keeps the JSON line of our side, printed
# before timm starts) and a failing case does not stop the others. Output in
# ${OUT:-/tmp/gpu_benchmark}: <model>_<mode>.log per case, results.jsonl (one JSON object a
# case, with "status"), then a summary table on stdout. Environment: PYTHON, OUT,
# DEIT_BENCH_TIMEOUT_TRAIN (170 s), DEIT_BENCH_TIMEOUT_INFER (110 s), DEIT_BENCH_STEPS (20).
set -euo pipefail

prog=gpu_benchmark.sh
die() { echo "$prog: error: $*" >&2; exit 2; }

dry_run=0
for arg in "$@"; do
  case $arg in
    --dry-run) dry_run=1 ;;
    -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (only --dry-run)" ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the repository root
[[ -d deit_jax ]] || die "no deit_jax/ in $PWD"
python=${PYTHON:-python3}
out=${OUT:-/tmp/gpu_benchmark}
steps=${DEIT_BENCH_STEPS:-20}
timeout_train=${DEIT_BENCH_TIMEOUT_TRAIN:-170}
timeout_infer=${DEIT_BENCH_TIMEOUT_INFER:-110}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

models=(deit_small_distilled_patch16_224 deit_base_distilled_patch16_224)
modes=(train infer)

# Sizes per case: two compilations fit the time budget (on an H200 a train step compiles in
# ~33 s, an inference step in ~17 s; the sweep budget lets the second size start after the
# first), so start near the fastest (H200, 2026-11-28: DeiT-B train 2,457 img/s at 128,
# 2,869 at 256).
batch_sizes() {
  case $1:$2 in
    *small*:train) echo 256,512 ;;
    *small*:infer) echo 512,1024 ;;
    *base*:train) echo 256,512 ;;
    *base*:infer) echo 256,512 ;;
  esac
}

show() {  # the command as one shell line, words single-quoted where needed
  local words=() w
  for w in "$@"; do
    if [[ $w =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then words+=("$w")
    else words+=("'${w//\'/\'\\\'\'}'"); fi
  done
  echo "${words[*]}"
}

if ((dry_run)); then
  show nvidia-smi -L
  show "$python" -c "import jax; print(jax.devices())"
else
  mkdir -p "$out"
  : >"$out/results.jsonl"
  echo "== $(date -u +%FT%TZ)  $(git rev-parse --short HEAD 2>/dev/null || echo '?')  out: $out"
  nvidia-smi -L || echo "$prog: nvidia-smi failed" >&2
  rc=0
  timeout -k 5 60 "$python" -c '
import importlib, sys
missing = []
for name in ("jax", "flax", "optax", "torch", "timm"):
  try:
    module = importlib.import_module(name)
    print(name, module.__version__, end="  ")
  except ImportError as e:
    missing.append(f"{name} ({e})")
if missing:
  print("\nmissing:", ", ".join(missing), file=sys.stderr)
  sys.exit(3)
import jax, torch
print("cuda", torch.version.cuda, "\njax.devices():", jax.devices())
sys.exit(0 if jax.default_backend() == "gpu" else 4)' || rc=$?
  # Without these no case can run (or each would run on the CPU): stop now.
  ((rc != 3)) || die "install the missing Python packages for $python first"
  ((rc != 4)) || die "JAX sees no GPU (a CPU-only jaxlib? install jax[cuda12] or jax[cuda13])"
  ((rc == 0)) || echo "$prog: the jax.devices() check failed (exit $rc)" >&2
fi

for model in "${models[@]}"; do
  for mode in "${modes[@]}"; do
    if [[ $mode == train ]]; then limit=$timeout_train budget=50; else limit=$timeout_infer budget=30; fi
    cmd=("$python" -m deit_jax.bench.benchmark --model "$model" --mode "$mode" --dtype bfloat16
         --batch_size auto --batch_sizes "$(batch_sizes "$model" "$mode")"
         --sweep_budget "$budget" --vs_timm --timm_compile --json --steps "$steps")
    log=$out/${model}_${mode}.log
    if ((dry_run)); then
      show timeout -k 10 "$limit" "${cmd[@]}"
      continue
    fi
    echo "== $model $mode (timeout ${limit} s)"
    rc=0
    timeout -k 10 "$limit" "${cmd[@]}" 2>&1 | tee "$log" || rc=$?
    # The case's last JSON line (ours alone if timm never finished), with its status.
    "$python" - "$log" "$model" "$mode" "$rc" >>"$out/results.jsonl" <<'EOF' || true
import json, sys
log, model, mode, rc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
result = {"model": model, "mode": mode}
for line in open(log, errors="replace"):
  if line.startswith("{"):
    try:
      result = json.loads(line)
    except ValueError:
      pass
status = {0: "ok", 3: "timm failed", 124: "timeout", 137: "timeout (killed)"}.get(rc, f"exit {rc}")
if "images_per_sec" not in result:
  status = "failed: " + status
elif rc == 0 and "timm_images_per_sec" not in result:
  status = "ok, no timm"
elif result.get("timm_compile_error"):
  status += ", timm eager (torch.compile failed)"
result.update(status=status, exit_status=rc)
print(json.dumps(result, sort_keys=True))
EOF
  done
done
if ((dry_run)); then exit 0; fi

echo "== summary ($out/results.jsonl)"
"$python" - "$out/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
head = ("model", "mode", "batch", "img/s ours", "img/s timm", "ratio", "MFU", "attn", "status")
def num(x, fmt):
  return "-" if x is None else format(x, fmt)
table = [head]
for r in rows:
  timm_b = r.get("timm_batch_size")
  batch = num(r.get("batch_size"), "d") + (f" (timm {timm_b})"
                                          if timm_b and timm_b != r.get("batch_size") else "")
  table.append((r["model"].replace("_patch16_224", ""), r["mode"], batch,
                num(r.get("images_per_sec"), ".1f"), num(r.get("timm_images_per_sec"), ".1f"),
                num(r.get("speedup_vs_timm"), ".2f"), num(r.get("mfu"), ".1%"),
                r.get("attn_impl") or "-", r["status"]))
widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
for row in table:
  print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
EOF
