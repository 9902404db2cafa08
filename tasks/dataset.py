"""Samples: latents x prompts_per_latent, the same (latent, prompt, seed) triples for every
variant built with the same seed, so variants compare trial by trial."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from inspect_ai.dataset import MemoryDataset, Sample

from esr_eval.sampling.seeds import derive_seed
from esr_eval.schema import SampleMetadata
from esr_eval.tasks.task_setup import Setup


def build_samples(
    setup: Setup,
    boost_rule: str = "threshold",
    extra: dict[str, Any] | None = None,
    id_suffix: str = "",
    prompt_template: str | None = None,
) -> list[Sample]:
    """`prompt_template` may use {prompt} and {label}; the judge always sees the plain prompt
    (metadata "prompt")."""
    samples = []
    a = setup.args
    for latent in setup.latents:
        rng = random.Random(derive_seed(a.seed, "prompts", latent))
        for prompt in rng.sample(setup.prompts, a.prompts_per_latent):
            label = setup.labels[latent]
            text = prompt.text if prompt_template is None else prompt_template.format(prompt=prompt.text, label=label)
            samples.append(
                Sample(
                    id=f"l{latent}-{prompt.id}{id_suffix}",
                    input=text,
                    target=steered_concept(latent, label),
                    metadata=SampleMetadata(
                        latent=latent,
                        label=label,
                        prompt=prompt.text,
                        prompt_id=prompt.id,
                        seed=derive_seed(a.seed, latent, prompt.id),
                        mode="add",
                        boost_rule=boost_rule,
                    ).to_metadata()
                    | (extra or {}),
                )
            )
    return samples


def steered_concept(latent: int, label: str) -> str:
    """The sample's target: the concept its steering pushes toward, which the judge checks each
    attempt against (the viewer's samples list shows it; no scorer compares the answer to it)."""
    return f"latent {latent}: {label}"


def dataset(samples: Iterable[Sample], name: str) -> MemoryDataset:
    return MemoryDataset(list(samples), name=name)
