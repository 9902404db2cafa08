#!/usr/bin/env bash
# Stage 5: the mechanism on the positive control. Off-topic detectors (strict rule, then the
# best-separating latents by AUC), their ablation against frequency-matched random latents on the
# CI latents, detector activity over the evidence's episodes, and the prefill (detection) control
# on the control's own off-topic starts, with the base model continuing the same prefixes.
# Run from the repository root: esr_eval/assets/positive_control/mechanism.sh
set -euo pipefail
here=esr_eval/assets/positive_control
esr-eval find-detectors --model smollm2-135m-resist --out $here/detectors.json
esr-eval find-detectors --model smollm2-135m-resist --rule auc --min-auc 0.7 --out $here/detectors_auc.json
inspect eval esr_eval/detector_ablation esr_eval/random_ablation --model steered/smollm2-135m-resist \
    -T detectors=$here/detectors_auc.json -T latents=$(cat $here/ci_latents.txt) -T prompts_per_latent=4 \
    --display plain --log-dir $here/logs/ablation
esr-eval episodes $here/logs/resist-steered --detectors $here/detectors_auc.json | tee $here/episodes.txt
# prefill: each model continues, unsteered, the start of its own off-topic steered answers (the
# evidence cells); the ablated and random conditions on the control only
inspect eval esr_eval/prefill_detection --model steered/smollm2-135m-resist -T source=$here/logs/resist-steered \
    -T detectors=$here/detectors_auc.json --display plain --log-dir $here/logs/prefill/smollm2-135m-resist
inspect eval esr_eval/prefill_detection --model steered/smollm2-135m -T source=$here/logs/base-steered \
    --display plain --log-dir $here/logs/prefill/smollm2-135m
# the ablation counts beside the unablated evidence on the same 40 samples (the README table)
python -c "
from esr_eval.results.logs import newest_log_files, read_log, sample_latent
here = 'esr_eval/assets/positive_control'
ci = {int(k) for k in open(here + '/ci_latents.txt').read().split(',')}
def show(name, samples):
    v = [s.scores['attempts_judge'].value for s in samples]
    print(f'{name}: multi-attempt {sum(x[\"multi_attempt\"] for x in v):.0f}/{len(v)}, ESR {sum(x[\"esr\"] for x in v):.0f}/{len(v)}')
[evidence] = newest_log_files([here + '/logs/resist-steered'])
show('unablated', [s for s in read_log(evidence).samples if sample_latent(s) in ci])
for path in newest_log_files([here + '/logs/ablation']):
    samples = read_log(path).samples
    for j in sorted({s.metadata.get('control_set') for s in samples}, key=str):
        show(f'{path.split(\"_\")[-2]} set {j}', [s for s in samples if s.metadata.get('control_set') == j])
"
