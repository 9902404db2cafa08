#!/usr/bin/env bash
# Stage 3: the positive control's three cells on the same held-out latents, prompts and seeds,
# judged by the offline grader; thresholds go to the committed thresholds.jsonl (CI reuses them).
# Run from the repository root: esr_eval/assets/positive_control/measure.sh
set -euo pipefail
here=esr_eval/assets/positive_control
common=(-T prompts_per_latent=4 -T threshold_cache=$here/thresholds.jsonl --display plain)
inspect eval esr_eval/steering_resistance --model steered/smollm2-135m-resist -T n_latents=25 "${common[@]}" \
    --log-dir $here/logs/resist-steered
# the latents the control's run sampled (training latents excluded), pinned for the other two cells
latents=$(python -c "
from esr_eval.results.logs import newest_log_files, read_log, sample_latent
[path] = newest_log_files(['$here/logs/resist-steered'])
print(','.join(str(k) for k in sorted({sample_latent(s) for s in read_log(path).samples})))
")
echo "held-out latents: $latents"
inspect eval esr_eval/steering_resistance --model steered/smollm2-135m -T latents=$latents "${common[@]}" \
    --log-dir $here/logs/base-steered
inspect eval esr_eval/no_steering --model steered/smollm2-135m-resist -T latents=$latents "${common[@]}" \
    --log-dir $here/logs/resist-unsteered
