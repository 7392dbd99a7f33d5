#!/usr/bin/env bash
# The three benchmarks on one GPU, in under 8 minutes (each step has a hard time limit; a step that fails or runs
# out of time is reported and the others still run).
#
#   bash benchmarks/gpu.sh                 # results in ./gpu-*.json and ./gpu-*.log
#   OUT=/some/dir bash benchmarks/gpu.sh   # results there
#
# Needs: the repo installed (pip install -e .) with a CUDA build of torch. Environment knobs: PYTHON (default
# python), OUT (default .), ATTNCLUSTER_BENCH_CACHE (where synthetic shards go, default /tmp/attncluster-bench; about
# 8 GiB), GPU_BENCH_COMPILE=1 (also time torch.compile in the model benchmark; adds about a minute).
#
# What it measures:
#   1. model step (bench_model.py): batch 256 and 1024, fp32 vs bf16 autocast, training step and inference,
#      AttentionCluster vs the loop port, GFLOP/s against torch.mm on the same GPU, a torch.profiler table.
#   2. reader (bench_data.py): DataLoader scaling over 1, 4, 8, 16 workers on this machine's CPUs (no TF columns;
#      memory and profile sections are CPU-only facts, measured in docs/benchmarks.md).
#   3. end to end (bench_train.py): 16 loader workers, batch 1024, bf16 and fp32, videos/s and the share of time
#      waiting for data, next to the model step alone.
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT="${OUT:-.}"
mkdir -p "$OUT"
export ATTNCLUSTER_BENCH_CACHE="${ATTNCLUSTER_BENCH_CACHE:-/tmp/attncluster-bench}"
export PYTHONUNBUFFERED=1
START=$(date +%s)
STATUS=()

echo "== GPU"
nvidia-smi -L || echo "nvidia-smi not available"
# DataLoader workers hand batches over in /dev/shm: 16 workers x 4 prefetched uint8 batches of 1024 videos is ~7.5 GB.
df -h /dev/shm 2>/dev/null || true
SHM_KB=$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $2}')
if [ -n "${SHM_KB:-}" ] && [ "$SHM_KB" -lt 16000000 ]; then
    echo "WARNING: /dev/shm is under 16 GB; the 16-worker end-to-end runs may fail (docker: --shm-size=32g)"
fi
"$PY" - <<'EOF'
import os, sys, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}, "
      f"cpus {os.cpu_count()}")
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch: install a CUDA build of torch")
print(torch.cuda.get_device_name(0))
EOF

# step NAME LIMIT_SECONDS COMMAND...: run with a hard limit, log to $OUT/gpu-NAME.log, never abort the script.
step() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit}s, $(( $(date +%s) - START ))s elapsed so far)"
    local rc=0
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/gpu-$name.log" || rc=$?  # pipefail: timeout's status
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        STATUS+=("$name: TIMED OUT after ${limit}s")
    elif [ "$rc" -ne 0 ]; then
        STATUS+=("$name: FAILED (exit $rc)")
    else
        STATUS+=("$name: ok")
    fi
}

COMPILE=()
if [ "${GPU_BENCH_COMPILE:-0}" = "1" ]; then COMPILE=(--compile); fi

step model 170 "$PY" benchmarks/bench_model.py --device cuda --batch-sizes 256 1024 --precisions fp32 bf16 \
    --sample-seconds 0.2 --warmup 5 --rounds 5 --no-rss --fused-adam ${COMPILE[@]+"${COMPILE[@]}"} \
    --json "$OUT/gpu-model.json"

step data 120 "$PY" benchmarks/bench_data.py --workers 1 4 8 16 --videos 8192 --shards 32 --rounds 1 \
    --min-seconds 3 --no-memory --no-profile --no-tf --no-tfrecord --json "$OUT/gpu-data.json"

# 32768 videos in 32 shards: each of the 16 workers gets 2 shards = 2048 videos = exactly 2 batches of 1024.
step train-bf16 90 "$PY" benchmarks/bench_train.py --device cuda --precision bf16 --workers 16 --batch-size 1024 \
    --videos 32768 --shards 32 --steps 60 --warmup-steps 10 --json "$OUT/gpu-train-bf16.json"

step train-fp32 50 "$PY" benchmarks/bench_train.py --device cuda --precision fp32 --workers 16 --batch-size 1024 \
    --videos 32768 --shards 32 --steps 40 --warmup-steps 5 --json "$OUT/gpu-train-fp32.json"

echo
echo "== summary ($(( $(date +%s) - START ))s in all)"
printf '%s\n' "${STATUS[@]}"
"$PY" - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
merged = {}
for path in sorted(glob.glob(os.path.join(out, "gpu-*.json"))):
    if os.path.basename(path) == "gpu-results.json":
        continue
    with open(path) as f:
        merged[os.path.basename(path)[4:-5]] = json.load(f)
with open(os.path.join(out, "gpu-results.json"), "w") as f:
    json.dump(merged, f, indent=1)
print(f"wrote {os.path.join(out, 'gpu-results.json')} ({', '.join(merged) or 'no results'})")
m = merged.get("model")
if m:
    for r in m["results"]:
        if r["impl"] == "AttentionCluster" and r["mode"] in ("train", "infer"):
            print(f"model {r['precision']} batch {r['batch']} {r['mode']}: {r['videos_per_s']:.0f} videos/s")
for k in ("train-bf16", "train-fp32"):
    t = merged.get(k)
    if t:
        print(f"end to end {t['precision']}: {t['end_to_end_videos_per_s']:.0f} videos/s, waiting for data "
              f"{t['data_wait_share']:.0%}, model step alone {t['model_step_videos_per_s']:.0f} videos/s")
EOF
