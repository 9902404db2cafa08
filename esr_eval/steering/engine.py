"""The engine interface every backend implements: batched steered generation (a different set of
interventions per request) and the read-outs that latent sampling, calibration, detectors and
episodes use (`esr_eval.steering.load` builds engines).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from esr_eval.config import GENERATION, PROVIDER_MAX_TOKENS
from esr_eval.steering.dictionary import FeatureDictionary
from esr_eval.steering.intervention import Intervention

Message = dict[str, str]


@dataclass
class GenerationRequest:
    messages: list[Message]
    interventions: Sequence[Intervention] = ()
    max_new_tokens: int = PROVIDER_MAX_TOKENS
    temperature: float = GENERATION.temperature
    top_p: float = GENERATION.top_p
    repetition_penalty: float = GENERATION.repetition_penalty
    seed: int | None = None
    dictionary: str | None = None  # id of the dictionary the interventions index; None: the primary


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    stop_reason: Literal["stop", "max_tokens"]
    token_ids: list[int] = field(default_factory=list)


def render_prompt_ids(tokenizer: Any, messages: list[Message], chat_template: bool = True) -> list[int]:
    """Token ids of a conversation up to where the assistant's answer starts: the chat template
    when the tokenizer has one, else plain text (base models)."""
    if chat_template and tokenizer.chat_template is not None:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 may return a BatchEncoding
    text = "\n\n".join(m["content"] if m["role"] != "assistant" else f"Answer: {m['content']}" for m in messages)
    return tokenizer(text + "\n\n", add_special_tokens=True)["input_ids"]


class SteeringEngine(ABC):
    """A causal LM with a feature dictionary at one layer, steered per request."""

    name: str
    layer: int
    tokenizer: Any
    dictionary: FeatureDictionary | None
    extra_dictionaries: dict[str, FeatureDictionary]

    @staticmethod
    def dictionary_key(dictionary: FeatureDictionary) -> str:
        return f"{dictionary.name}@{dictionary.layer}"

    @property
    def dictionary_id(self) -> str | None:
        return None if self.dictionary is None else self.dictionary_key(self.dictionary)

    def resolve_dictionary(self, key: str | None) -> FeatureDictionary | None:
        if key is None or key == self.dictionary_id:
            return self.dictionary
        if key not in self.extra_dictionaries:
            known = [k for k in [self.dictionary_id, *self.extra_dictionaries] if k]
            raise ValueError(
                f"the request steers dictionary {key!r}, but the model holds {known}: load the same "
                "dictionary (-M dictionary=..., layer) as the run that chose the latents"
            )
        return self.extra_dictionaries[key]

    @abstractmethod
    def add_dictionary(self, dictionary: FeatureDictionary) -> str:
        """Make a second dictionary (e.g. a direction set) steerable; returns its id."""

    @abstractmethod
    def prompt_ids(self, messages: list[Message]) -> list[int]: ...

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answers in request order; each row with its own steering, seed and settings."""

    @abstractmethod
    def prompt_residuals(self, prompts: Sequence[list[Message]], skip: int = 2) -> list[Any]:
        """Unsteered residual at the hook layer over each prompt's tokens, [T - skip, d_model]."""

    @abstractmethod
    def read_latents(
        self,
        conversations: Sequence[tuple[list[Message], str]],
        latents: Sequence[int] | None = None,
        interventions: Sequence[Sequence[Intervention]] | None = None,
        batch_size: int = 8,
    ) -> list[Any]:
        """Per-token dictionary activations over each answer, [answer_tokens, n_latents]."""

    def generate_in_batches(
        self, requests: Sequence[GenerationRequest], batch_size: int = 16, desc: str = "answers"
    ) -> list[GenerationResult]:
        """`generate` over consecutive chunks, with a progress bar (command-line work)."""
        from tqdm import tqdm

        results: list[GenerationResult] = []
        for start in tqdm(range(0, len(requests), batch_size), desc=desc, unit="batch"):
            results += self.generate(requests[start : start + batch_size])
        return results
