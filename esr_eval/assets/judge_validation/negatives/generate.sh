#!/usr/bin/env bash
# Generate the real-negative pool's answers: both embedded models, steering_resistance (at the
# calibrated threshold), boost_sweep (5 levels from mean-2sd to mean+2sd of the thresholds, so
# drifting and degenerate text are well represented) and no_steering, two seeds per model whose
# latents are not those of the judge-validation set. Then harvest them:
#   python -m esr_eval.judge_tools.negatives harvest LOGDIR/*.eval
# Usage: generate.sh LOGDIR   (about 1 h on 2 CPU cores)
set -euo pipefail
out=${1:?usage: generate.sh LOGDIR}
export HF_HUB_OFFLINE=1 INSPECT_DISPLAY=plain
common=(-T n_latents=10 -T max_tokens=256 -T calibration_trials=4 --log-dir "$out")
for model_seed in smollm2-135m:11 gemma-3-270m:21 smollm2-135m:12 gemma-3-270m:22; do
  model=${model_seed%%:*} seed=${model_seed##*:}
  m=(--model "steered/$model" -T seed="$seed")
  inspect eval esr_eval/steering_resistance "${m[@]}" "${common[@]}" -T prompts_per_latent=6
  inspect eval esr_eval/boost_sweep "${m[@]}" "${common[@]}" -T prompts_per_latent=1 -T levels=5 -T span=2 -T target=0.3
  inspect eval esr_eval/no_steering "${m[@]}" "${common[@]}" -T prompts_per_latent=6
done
