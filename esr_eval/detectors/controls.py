"""Random controls for detector ablation: as many other latents, each drawn from the firing-
frequency bin of the detector it replaces."""

from __future__ import annotations

import random

import numpy as np

from esr_eval.errors import UsageError
from esr_eval.schema import DetectorsFile
from esr_eval.steering.dictionary import FeatureDictionary


def frequency_bins(frequencies: dict[int, float], n_bins: int = 10) -> dict[int, int]:
    """Quantile bins of log firing frequency over live latents."""
    live = {k: f for k, f in frequencies.items() if f > 0}
    logf = np.log10(np.array(list(live.values())))
    edges = np.quantile(logf, np.linspace(0, 1, n_bins + 1)[1:-1])
    return {k: int(np.searchsorted(edges, v, side="right")) for k, v in zip(live, logf)}


def matched_controls(detectors: list[int], frequencies: dict[int, float], n_sets: int = 3, seed: int = 0, n_bins: int = 10) -> list[list[int]]:
    """`n_sets` sets of random non-detector latents, each latent drawn from the bin of the detector
    it replaces; a bin that runs out borrows from the nearest bin."""
    bins = frequency_bins(frequencies, n_bins)
    pools: dict[int, list[int]] = {}
    for k, b in sorted(bins.items()):
        if k not in detectors:
            pools.setdefault(b, []).append(k)
    rng = random.Random(seed)
    sets = []
    for _ in range(int(n_sets)):
        used: set[int] = set()
        chosen = []
        for det in detectors:
            home = bins.get(det, 0)
            for b in sorted(pools, key=lambda b: abs(b - home)):
                free = [k for k in pools[b] if k not in used]
                if free:
                    pick = rng.choice(free)
                    used.add(pick)
                    chosen.append(pick)
                    break
        sets.append(sorted(chosen))
    return sets


def control_frequencies(detectors: DetectorsFile, dictionary: FeatureDictionary) -> dict[int, float]:
    """Firing frequencies for matching: the dictionary's latent_stats.json (large corpus) when it
    has one, else the frequencies measured during discovery."""
    from esr_eval.sampling.latents import firing_frequencies

    found = firing_frequencies(dictionary)
    if found is None:
        found = dict(enumerate(detectors.firing_frequency))
    if not found:
        raise UsageError("no firing frequencies to match controls on: rerun `esr-eval find-detectors`")
    return found
