#!/usr/bin/env bash
# Stage 1 of the positive control: steering-aware self-correction rows of SmolLM2-135M, in chunks
# that each finish in well under an hour on 2 CPU cores (different seeds, so different training
# latents and prompts). Usage: make.sh CHUNK SEED   e.g. make.sh a 1
set -euo pipefail
chunk=${1:?usage: make.sh CHUNK SEED} seed=${2:?usage: make.sh CHUNK SEED}
here=$(cd "$(dirname "$0")" && pwd)
export HF_HUB_OFFLINE=1
esr-eval make-finetune-data --steered --model smollm2-135m --n 260 --n-latents 24 --seed "$seed" \
    --max-tokens 144 --batch-size 64 --out "$here/rows-$chunk.jsonl"
