#!/usr/bin/env bash
# Stage 3: the positive control's three cells on the same held-out latents, prompts and seeds,
# judged by the offline grader; thresholds go to the committed thresholds.jsonl (CI reuses them).
# Run from the repository root: esr_eval/assets/positive_control/measure.sh
set -euo pipefail
here=esr_eval/assets/positive_control
common=(-T prompts_per_latent=4 -T threshold_cache=$here/thresholds.jsonl --display plain)
inspect eval esr_eval/steering_resistance --model steered/smollm2-135m-resist -T n_latents=25 "${common[@]}" \
    --log-dir $here/logs/resist-steered
latents=$(python -c "
import sys; from inspect_ai.log import list_eval_logs, read_eval_log
log = read_eval_log(list_eval_logs('$here/logs/resist-steered')[0], header_only=True)
print(','.join(str(k) for k in log.eval.task_args['latents'] or []) if log.eval.task_args.get('latents') else '')
")
if [ -z "$latents" ]; then
    latents=$(python -c "
from inspect_ai.log import list_eval_logs, read_eval_log
log = read_eval_log(list_eval_logs('$here/logs/resist-steered')[0])
print(','.join(str(k) for k in sorted({s.metadata['latent'] for s in log.samples})))
")
fi
echo "held-out latents: $latents"
inspect eval esr_eval/steering_resistance --model steered/smollm2-135m -T latents=$latents "${common[@]}" \
    --log-dir $here/logs/base-steered
inspect eval esr_eval/no_steering --model steered/smollm2-135m-resist -T latents=$latents "${common[@]}" \
    --log-dir $here/logs/resist-unsteered
