#!/usr/bin/env bash
# Self-correction fine-tuning on the embedded model (SmolLM2-135M-Instruct), offline:
# data at three mixing ratios, one LoRA model per ratio, and steering_resistance + no_steering
# for the base model and each tuned model on the same latents. About 1 h 45 min on a 2-core CPU.
#
#   docs/examples/finetune-demo.sh [OUT_DIR]      # default: finetune-demo
#
# Results: OUT_DIR/report/report.md and finetune.png (rates against the mixing ratio).
set -euo pipefail

OUT=$(realpath -m "${1:-finetune-demo}")
RATIOS=(10 50 90)
EVAL=(-M dictionary=smollm2-135m -T prompts_per_latent=5 --log-dir "$OUT/logs")

esr-eval make-finetune-data --model smollm2-135m --n 160 --ratio 0.1 0.5 0.9 --max-tokens 128 --out "$OUT/data.jsonl"

inspect eval esr_eval/steering_resistance esr_eval/no_steering --model steered/smollm2-135m -T n_latents=6 "${EVAL[@]}"
# The tuned models are evaluated on the latents the base run sampled (relevance filtering reads
# the model's own activations, so sampling again could pick other latents).
LATENTS=$(python - "$OUT/logs" <<'PY'
import sys
from inspect_ai.log import list_eval_logs, read_eval_log

for info in list_eval_logs(sys.argv[1]):
    log = read_eval_log(info, header_only=True)
    if log.eval.task.endswith("steering_resistance") and log.eval.model == "steered/smollm2-135m":
        print(",".join(map(str, log.eval.metadata["latents"])))
        break
PY
)

for r in "${RATIOS[@]}"; do
  esr-eval finetune --model smollm2-135m --data "$OUT/data-r$r.jsonl" --out "$OUT/tuned-r$r"
  inspect eval esr_eval/steering_resistance esr_eval/no_steering --model "steered/$OUT/tuned-r$r" -T latents="$LATENTS" "${EVAL[@]}"
done

esr-eval report "$OUT/logs" --out "$OUT/report"
