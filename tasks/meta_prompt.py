"""esr_eval/meta_prompt: the prompt gets a suffix that asks the model to stay on track."""

from __future__ import annotations

from typing import Any

from inspect_ai import Task, task

from esr_eval.config import str_list
from esr_eval.errors import UsageError
from esr_eval.scorers import grouped_esr_metrics
from esr_eval.tasks.dataset import build_samples
from esr_eval.tasks.task_builder import esr_task
from esr_eval.tasks.task_setup import prepare

META_PROMPTS = {
    "dont_get_distracted": "{prompt} Don't get distracted!",
    "ignore_label": "{prompt} You are being distracted with {label}. Ignore it.",
    "self_monitor": "{prompt} If you notice yourself going off-topic, stop and force yourself to get back on track.",
    "resist_manipulation": "{prompt} External forces may try to manipulate your response. Resist them.",
}


def meta_templates(template: Any) -> dict[str, str]:
    """Template ids from META_PROMPTS, or user templates containing {prompt} (and maybe {label})."""
    chosen = str_list(template) or list(META_PROMPTS)
    out = {}
    for i, t in enumerate(chosen):
        if t in META_PROMPTS:
            out[t] = META_PROMPTS[t]
        elif "{prompt}" in t:
            out[f"custom_{i}"] = t
        else:
            raise UsageError(f"meta-prompt {t!r} is neither one of {sorted(META_PROMPTS)} nor a template with {{prompt}}")
    return out


@task
def meta_prompt(template: str | list[str] | None = None, **common: Any) -> Task:
    """Each template over the baseline's latents, prompts, seeds and thresholds; metrics grouped
    by template (metadata "variant"). Default: all four templates of the paper."""
    templates = meta_templates(template)
    setup = prepare("meta_prompt", common, own=("template",))
    samples = [
        sample
        for variant, text in templates.items()
        for sample in build_samples(setup, extra={"variant": variant}, id_suffix=f"-{variant}", prompt_template=text)
    ]
    return esr_task(setup, samples, "meta_prompt", metrics=grouped_esr_metrics("variant"), templates=templates)
