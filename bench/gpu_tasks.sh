#!/usr/bin/env bash
# Every task's CUDA path with the tiny model on the toy data (needs `make demo`'s data and renders first):
# text->shape full fine-tune (bf16 autocast), the same with bf16 reported missing (fp16 + GradScaler, the path of
# pre-Ampere GPUs), eval_recall, composed stage 1, Combiner, MoE Combiner, eval_composed, and the captioner.
# Short runs: they check that each path runs on the GPU, not what it scores.
#     bash bench/gpu_tasks.sh [out_dir]        # PY=python3 bash bench/gpu_tasks.sh on a machine without .venv
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT_DIR=${1:-logs/gpu_tasks}
D=data/pix3d_toy/usable_samples.jsonl
RUNS=(--logs_dir="$OUT_DIR/logs" --weights_dir="$OUT_DIR/weights" --cache_dir="$OUT_DIR/cache" --clip_model=tiny)
W=$OUT_DIR/weights
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_tasks.sh: no CUDA device is visible')"
[ -f "$D" ] || { echo "gpu_tasks.sh: $D not found: run make demo (or its data and render steps) first"; exit 2; }
$PY train.py "${RUNS[@]}" --data_jsonl=$D --train_mode=full --lr=5e-4 --epochs=2 --draws_per_model=2 --run_name=full
$PY eval_recall.py --checkpoint "$W/full/best.pt" --split test --data_jsonl $D --out_dir "$OUT_DIR/recall"
$PY - "${RUNS[@]}" --data_jsonl=$D --train_mode=full --lr=5e-4 --epochs=1 --draws_per_model=1 --run_name=fp16 <<'PYEOF'
import runpy, sys, torch
torch.cuda.is_bf16_supported = lambda **kwargs: False  # as on a V100 or T4: autocast picks fp16 + GradScaler
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
PYEOF
$PY train_composed.py "${RUNS[@]}" --data_root=$D --stage=1 --init_from="$W/full/best.pt" --epochs=2 --run_name=stage1
for c in combiner moe_combiner; do
  $PY train_composed.py "${RUNS[@]}" --data_root=$D --stage=2 --combiner=$c --init_from="$W/stage1/best.pt" \
      --epochs=3 --batch_size=32 --run_name=$c
done
$PY eval_composed.py --data_root=$D --stage1 "$W/stage1/best.pt" --combiner "$W/combiner/best.pt" \
    --moe_combiner "$W/moe_combiner/best.pt" --out_dir "$OUT_DIR/composed"
$PY train_captioner.py --clip_checkpoint="$W/full/best.pt" --epochs=2 --patience=5 --run_name=captioner \
    --logs_dir="$OUT_DIR/logs" --weights_dir="$OUT_DIR/weights" --cache_dir="$OUT_DIR/cache"
echo "gpu_tasks.sh: every task ran on the GPU; runs under $OUT_DIR"
