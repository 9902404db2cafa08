"""The engine interface every backend implements: batched steered generation (any number of add
and clamp interventions per request, a different set per request), streamed requests that join a
running batch, and the read-outs that latent sampling, calibration, detectors and episodes use
(`esr_eval.steering.load` builds engines). Tensors may be torch; nothing here names a backend.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from esr_eval.config import GENERATION, PROVIDER_MAX_TOKENS, ModelArgs
from esr_eval.steering.dictionary import FeatureDictionary
from esr_eval.steering.intervention import Intervention

Message = dict[str, str]


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is built from (`esr_eval.steering.load.load_spec`, one engine per spec per
    process): the model and dictionary, the backend and its own args (`ModelArgs.backend_args`:
    hf: device_map, max_memory; vllm: parallel sizes, max_model_len, max_num_seqs, base_url)."""

    model: str  # preset name, hub id, folder or GGUF file
    dictionary: str | None = None
    layer: int | None = None
    labels: str | None = None
    dtype: str | None = None  # None: the preset's, else `steering.models.resolve_dtype`'s
    device: str = "cpu"
    engine: str = "hf"
    max_batch_size: int = ModelArgs.max_batch_size
    backend_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: str, args: ModelArgs, base_url: str | None = None) -> "EngineSpec":
        """The spec of `steered/<model>` with its parsed -M args."""
        return cls(model, args.dictionary, args.layer, args.labels, args.dtype, args.device, args.engine,
                   args.max_batch_size, args.backend_args(base_url))  # fmt: skip

    def key(self) -> tuple:
        """Hashable identity: runs with different batch sizes never share an engine's setting."""
        layer = None if self.layer is None else int(self.layer)
        return (self.engine, self.model, self.dictionary, layer, self.labels, self.dtype, self.device,
                int(self.max_batch_size), repr(sorted(self.backend_args.items())))  # fmt: skip


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
    when the tokenizer has one, else plain text (base models). A conversation that ends with an
    assistant message is a partial answer (a prefill): it is left open for the model to continue
    (its trailing whitespace dropped: the continuation's first token carries it)."""
    prefill = bool(messages) and messages[-1]["role"] == "assistant"
    if prefill:
        messages = [*messages[:-1], {**messages[-1], "content": messages[-1]["content"].rstrip()}]
    if chat_template and tokenizer.chat_template is not None:
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=not prefill, continue_final_message=prefill, tokenize=True
        )
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 may return a BatchEncoding
    history = messages[:-1] if prefill else messages
    text = "\n\n".join(m["content"] if m["role"] != "assistant" else f"Answer: {m['content']}" for m in history) + "\n\n"
    # a base model's answer starts right after the prompt, so a prefill continues there
    return tokenizer(text + messages[-1]["content"] if prefill else text, add_special_tokens=True)["input_ids"]


_queues: "weakref.WeakSet[RequestQueue]" = weakref.WeakSet()
STOP_WAIT_S = 10.0  # at exit, how long a worker may take to finish its decode step


class RequestQueue:
    """Requests waiting for an engine's worker thread, each with the future its caller awaits.

    The worker (`serve(queue)`, started on the first submit) takes requests between its steps and
    returns when `take` reports the queue idle (or stopped); the next submit starts a new one.
    At interpreter exit (after Ctrl-C, say) every worker is stopped between two steps and joined:
    a daemon thread killed inside a torch call aborts the process ("terminate called without an
    active exception", exit 134) instead of letting it exit with its cancelled status."""

    def __init__(self, serve: Callable[["RequestQueue"], None], idle_s: float = 2.0, name: str = "steering-engine") -> None:
        self._serve = serve
        self._items: deque[tuple[GenerationRequest, Future]] = deque()
        self._ready = threading.Condition()
        self._worker: threading.Thread | None = None
        self.idle_s = idle_s
        self.name = name
        self._stopped = False
        _queues.add(self)

    def submit(self, request: GenerationRequest) -> Future:
        future: Future = Future()
        with self._ready:
            if self._stopped:
                future.set_exception(RuntimeError("the steering engine has stopped: the process is exiting"))
                return future
            self._items.append((request, future))
            self._ready.notify()
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, args=(self,), name=self.name, daemon=True)
                self._worker.start()
        return future

    def take(self, limit: int, wait: bool) -> list[tuple[GenerationRequest, Future]] | None:
        """Up to `limit` waiting requests whose callers still wait for them. With `wait` (the worker
        has nothing running) block for the first; None tells the worker to stop (idle)."""
        with self._ready:
            if self._stopped:
                self._worker = None
                return None
            if wait and not self._items:
                self._ready.wait_for(lambda: bool(self._items) or self._stopped, timeout=self.idle_s)
                if not self._items:
                    self._worker = None
                    return None
            taken: list[tuple[GenerationRequest, Future]] = []
            while self._items and len(taken) < limit:
                request, future = self._items.popleft()
                if future.set_running_or_notify_cancel():  # a cancelled sample is dropped here
                    taken.append((request, future))
            return taken

    def __len__(self) -> int:
        return len(self._items)

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Fail the waiting requests, let the worker return after its current step, and join it."""
        with self._ready:
            self._stopped = True
            worker, waiting = self._worker, list(self._items)
            self._items.clear()
            self._ready.notify_all()
        for _, future in waiting:
            future.cancel()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)


@atexit.register
def _stop_workers() -> None:
    for queue in list(_queues):
        queue.stop()


def settle(future: Future, outcome: "GenerationResult | BaseException") -> None:
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class SteeringEngine(ABC):
    """A causal LM with a feature dictionary at one layer, steered per request.

    A backend implements `generate` (a list of requests, answers in order) and the read-outs;
    `submit` streams single requests into a running batch. The default `submit` runs whatever is
    queued through `generate` in a worker thread; a backend with continuous batching (rows join
    and leave between decode steps) overrides it."""

    name: str
    layer: int
    tokenizer: Any
    dictionary: FeatureDictionary | None
    extra_dictionaries: dict[str, FeatureDictionary]
    dtype: str  # the weights' dtype ("bfloat16"): answers, hence thresholds, depend on it
    max_batch_size: int = ModelArgs.max_batch_size  # rows in flight for submitted requests (the provider sets -M max_batch_size)

    @classmethod
    def load(
        cls,
        source: str,
        dictionary: str | None = None,
        layer: int | None = None,
        labels: str | None = None,
        dtype: str | None = None,
        device: str = "cpu",
        **backend_args: Any,
    ) -> "SteeringEngine":
        """Build the engine from a preset name, hub id, folder or GGUF file and a dictionary spec
        (`esr_eval.steering.load.load_engine` calls it once per configuration). `dtype` None: the
        preset's (`Preset.placement`), else `steering.models.resolve_dtype`'s. `backend_args` are the backend's
        own -M args (`ModelArgs.backend_args()`)."""
        raise NotImplementedError(f"{cls.__name__} does not implement load")

    def primary_dictionary(self) -> FeatureDictionary:
        """The dictionary steering indexes, for callers that checked one is loaded."""
        assert self.dictionary is not None, f"{self.name} has no dictionary loaded"
        return self.dictionary

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

    def context_length(self) -> int | None:
        """Tokens the model attends over (prompt + answer); None when the backend does not know."""
        return None

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answers in request order; each row with its own steering, seed and settings. A row gives
        the same tokens alone or in any batch."""

    def submit(self, request: GenerationRequest) -> Future:
        """Queue one request; the future resolves to its GenerationResult (or its error)."""
        queue = self.__dict__.get("_queue")
        if queue is None:
            queue = self.__dict__.setdefault("_queue", RequestQueue(self._serve))
        return queue.submit(request)

    def _serve(self, queue: RequestQueue) -> None:
        """The worker thread. By default whatever is queued runs as one `generate` call; a backend
        with continuous batching lets requests join between its decode steps instead."""
        while (taken := queue.take(self.max_batch_size, wait=True)) is not None:
            try:
                results: list[GenerationResult | BaseException] = list(self.generate([request for request, _ in taken]))
            except Exception as err:  # every caller in the batch sees the failure
                results = [err] * len(taken)
            for (_, future), outcome in zip(taken, results):
                settle(future, outcome)

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

    def torch_model(self) -> Any:
        """The causal LM as an in-process torch module, for wrappers that run their own forward
        passes (lm-eval's HFLM in `esr-eval capability`); `steered_forward` steers them."""
        raise NotImplementedError(self._no_torch_model())

    def steered_forward(self, interventions: Sequence[Intervention], rows: int) -> AbstractContextManager[Any]:
        """A context in which each forward pass of `torch_model()` over `rows` rows runs with
        `interventions` on every row."""
        raise NotImplementedError(self._no_torch_model())

    def _no_torch_model(self) -> str:
        return (
            f"the {type(self).__name__} backend runs its model outside this process's torch: "
            "use the hf backend (-M engine=hf) for lm-eval capability checks"
        )

    def generate_in_batches(
        self, requests: Sequence[GenerationRequest], batch_size: int = 16, desc: str = "answers"
    ) -> list[GenerationResult]:
        """`generate` over consecutive chunks, with a progress bar (command-line work)."""
        from tqdm import tqdm

        results: list[GenerationResult] = []
        for start in tqdm(range(0, len(requests), batch_size), desc=desc, unit="batch"):
            results += self.generate(requests[start : start + batch_size])
        return results
