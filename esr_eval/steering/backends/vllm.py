"""The vLLM backend (`-M engine=vllm`): steered generation and read-outs through the vllm-lens
plugin, in process (`vllm.LLM`) or against a running `vllm serve` deployment (`--model-base-url`).

- add interventions: one vllm-lens steering vector per request (the sum of value * W_dec[k]);
- clamp interventions: a per-request vllm-lens hook (`vllm_hooks.ClampHook`) that re-encodes the
  clamped latents at every position (a rank-1 update per latent for ReLU / JumpReLU SAEs and
  direction sets, the full encode for TopK) and then adds the request's add vector, the Hugging
  Face backend's order;
- read-outs: vllm-lens activation capture at the dictionary's layer (layer i is the output of
  decoder layer i, the Hugging Face hook point), encoded here with the dictionary.

Prompts travel as token ids rendered by our own tokenizer, and answers come back as token ids
decoded here, so both backends see and return the same text. Prefix-cache reads are skipped for
every request: a steered request's cached keys and values would otherwise leak into the next one.
"""

from __future__ import annotations

import concurrent.futures
import glob
import importlib.util
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from esr_eval.errors import UsageError
from esr_eval.steering.dictionary import (
    DirectionSet,
    FeatureDictionary,
    load_dictionary,
)
from esr_eval.steering.engine import (
    GenerationRequest,
    GenerationResult,
    Message,
    SteeringEngine,
    render_prompt_ids,
)
from esr_eval.steering.intervention import Intervention
from esr_eval.steering.models import merged_folder, plain_folder, resolve_dtype
from esr_eval.steering.presets import get_preset, resolve_model

PIP_INSTALL = 'pip install "esr-eval[vllm]"'
CPU_RECIPE = "the CPU recipe is in docs/engines.md, section On a CPU"
SERVER_TIMEOUT_S = 3600.0
READ_ROWS = 64  # rows per read-out call: bounds the residuals a worker holds at once


# ---------------------------------------------------------------- checks before any load
def local_devices() -> tuple[int, str]:
    """What vLLM can spread one in-process engine over: GPUs, else CPU NUMA nodes."""
    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPU(s)"
    return max(1, len(glob.glob("/sys/devices/system/node/node[0-9]*"))), "CPU NUMA node(s)"


def check_parallel(tensor_parallel_size: int, pipeline_parallel_size: int, server: bool) -> None:
    tp, pp = int(tensor_parallel_size), int(pipeline_parallel_size)
    if tp < 1 or pp < 1:
        raise UsageError(f"tensor_parallel_size {tp} and pipeline_parallel_size {pp} must be at least 1")
    if server:
        if (tp, pp) != (1, 1):
            raise UsageError(
                "tensor_parallel_size and pipeline_parallel_size are settings of the vLLM server: start it with "
                "`vllm serve MODEL --tensor-parallel-size N --pipeline-parallel-size M` and leave them out here"
            )
        return
    n, kind = local_devices()
    if tp * pp > n:
        raise UsageError(
            f"tensor_parallel_size {tp} x pipeline_parallel_size {pp} needs {tp * pp} devices but this machine has "
            f"{n} {kind}: lower them, or serve the model across nodes with `vllm serve` and pass --model-base-url"
        )


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_vllm(server: bool) -> None:
    """vllm-lens always (steering vectors, hooks, tensor transport); vLLM itself in process."""
    missing = [m for m in (("vllm_lens",) if server else ("vllm", "vllm_lens")) if not installed(m)]
    if missing:
        names = " and ".join(m.replace("_", "-") for m in missing)
        raise UsageError(f"-M engine=vllm needs {names}, which is not installed: run `{PIP_INSTALL}` on a GPU machine ({CPU_RECIPE})")


def preflight(tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, base_url: str | None = None) -> None:
    """Every check of `-M engine=vllm` that needs no model: bad sizes, then missing packages."""
    check_parallel(tensor_parallel_size, pipeline_parallel_size, server=base_url is not None)
    require_vllm(server=base_url is not None)


# ---------------------------------------------------------------- steering as vllm-lens objects
def portable_encoder(dictionary: FeatureDictionary, latents: Sequence[int]):
    """The activations of `latents` as a torch-only `LatentEncoder` (runs on a server without
    esr-eval or sae-lens), or `DictionaryColumns` for an architecture it does not cover."""
    from esr_eval.steering.backends.vllm_hooks import DictionaryColumns, LatentEncoder

    idx = torch.tensor(list(latents), dtype=torch.long)
    if isinstance(dictionary, DirectionSet):
        d = dictionary.directions.float().cpu()
        W = (d / (d * d).sum(-1, keepdim=True).clamp_min(1e-12))[idx].T.contiguous()
        return LatentEncoder("linear", W, torch.zeros(len(idx)), torch.zeros(d.shape[1]))
    sae: Any = getattr(dictionary, "sae", None)
    cfg: Any = getattr(sae, "cfg", None)
    plain = (
        cfg is not None
        and getattr(cfg, "normalize_activations", "none") == "none"
        and getattr(cfg, "reshape_activations", "none") == "none"
    )
    if plain:
        arch = cfg.architecture()
        W_enc, b_enc = sae.W_enc.detach().float().cpu(), sae.b_enc.detach().float().cpu()
        b_dec = sae.b_dec.detach().float().cpu() * float(bool(cfg.apply_b_dec_to_input))
        if arch == "standard":
            return LatentEncoder("relu", W_enc[:, idx].contiguous(), b_enc[idx], b_dec)
        if arch == "jumprelu":
            return LatentEncoder("jumprelu", W_enc[:, idx].contiguous(), b_enc[idx], b_dec, threshold=sae.threshold.detach().float().cpu()[idx])
        if arch == "topk":
            scale = sae.W_dec.detach().float().cpu().norm(dim=-1) if getattr(cfg, "rescale_acts_by_decoder_norm", False) else None
            return LatentEncoder("topk", W_enc, b_enc, b_dec, k=int(cfg.k), acts_scale=scale, columns=idx)
    return DictionaryColumns(dictionary, idx)


def steering_objects(
    interventions: Sequence[Intervention], dictionary: FeatureDictionary | None, layer: int, dtype: torch.dtype
) -> tuple[list[Any], list[Any]]:
    """(steering vectors, hooks) of one request: adds alone ride as one steering vector; with a
    clamp, one hook does the clamp and then the add."""
    from vllm_lens import Hook, SteeringVector

    from esr_eval.steering.backends.vllm_hooks import ClampHook

    if not interventions:
        return [], []
    if dictionary is None:
        raise ValueError("steering was requested but no dictionary is loaded: pass -M dictionary=...")
    W_dec = dictionary.W_dec.detach().float().cpu()
    add = None
    clamp: dict[int, float] = {}
    for iv in interventions:
        dictionary.check_latent(iv.latent)
        if iv.mode == "add":
            add = (torch.zeros(W_dec.shape[1]) if add is None else add) + iv.value * W_dec[iv.latent]
        else:
            clamp[int(iv.latent)] = float(iv.value)  # a later clamp of the same latent wins, as in the HF backend
    if not clamp:
        assert add is not None  # some intervention, none a clamp
        return [SteeringVector(activations=add.to(dtype)[None], layer_indices=[layer], scale=1.0)], []
    latents = sorted(clamp)
    hook = ClampHook(
        encoder=portable_encoder(dictionary, latents),
        values=torch.tensor([clamp[k] for k in latents], dtype=torch.float32),
        W_dec=W_dec[latents].contiguous(),
        add=None if add is None else add.to(dtype),
    )
    return [], [Hook(fn=hook, layer_indices=[layer])]


# ---------------------------------------------------------------- transports
@dataclass
class TransportRow:
    """One request as a transport sends it."""

    prompt: list[int]
    sampling: dict[str, Any]
    vectors: list[Any] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)
    capture: bool = False


@dataclass
class Output:
    token_ids: list[int]
    finish_reason: str
    residual: torch.Tensor | None  # [positions, d_model] at the steered layer, if captured
    hook_results: dict[str, dict[str, Any]]

    def captured_residual(self) -> torch.Tensor:
        assert self.residual is not None, "the row asked for its residual (capture=True)"
        return self.residual


class InProcess:
    """A `vllm.LLM` in this process. vllm-lens keys one call's steering by the request's place in
    it, so calls are serialised."""

    def __init__(self, llm: Any, layer: int, stop_token_ids: list[int]) -> None:
        self.llm, self.layer, self.stop_token_ids = llm, layer, stop_token_ids
        self._lock = threading.Lock()

    def run(self, rows: Sequence[TransportRow]) -> list[Output]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = []
        for r in rows:  # a fresh SamplingParams per request: vllm-lens pops its steering out in place
            extra: dict[str, Any] = {}
            if r.vectors:
                extra["apply_steering_vectors"] = r.vectors
            if r.hooks:
                extra["apply_hooks"] = r.hooks
            if r.capture:
                extra["output_residual_stream"] = [self.layer]
            params.append(
                SamplingParams(
                    **r.sampling,
                    stop_token_ids=self.stop_token_ids,
                    detokenize=False,
                    skip_reading_prefix_cache=True,
                    extra_args=extra or None,
                )
            )
        prompts = [TokensPrompt(prompt_token_ids=r.prompt) for r in rows]
        with self._lock:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for o in outs:
            acts = getattr(o, "activations", None)
            residual = acts["residual_stream"][0] if acts else None
            results.append(Output(list(o.outputs[0].token_ids), o.outputs[0].finish_reason or "", residual, getattr(o, "hook_results", None) or {}))
        return results


class Server:
    """A running `vllm serve` deployment with vllm-lens installed: each request carries its
    steering in `vllm_xargs` (vectors as JSON, hooks cloudpickled) to `/v1/completions`."""

    def __init__(self, base_url: str, layer: int, stop_token_ids: list[int], timeout: float = SERVER_TIMEOUT_S) -> None:
        import cloudpickle
        import httpx

        from esr_eval.steering.backends import vllm_hooks

        cloudpickle.register_pickle_by_value(vllm_hooks)  # the server needs no esr-eval for clamps
        url = base_url.rstrip("/")
        self.url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.layer, self.stop_token_ids = layer, stop_token_ids
        self.client = httpx.Client(timeout=timeout)
        try:
            models = self.client.get(f"{self.url}/v1/models", timeout=30).json()["data"]
        except Exception as err:
            raise UsageError(f"no vLLM server answers at {self.url} ({type(err).__name__}): start `vllm serve MODEL` there or fix --model-base-url") from None
        self.model = models[0]["id"]

    def _one(self, r: TransportRow) -> Output:
        from vllm_lens import deserialize_hook_results
        from vllm_lens._helpers._serialize import decode_activations

        xargs: dict[str, Any] = {"skip_reading_prefix_cache": 1}
        if r.vectors:
            xargs["apply_steering_vectors"] = json.dumps([v.model_dump() for v in r.vectors])
        if r.hooks:
            xargs["apply_hooks"] = json.dumps([h.model_dump() for h in r.hooks])
        if r.capture:
            xargs["output_residual_stream"] = json.dumps([self.layer])
        body = {
            "model": self.model,
            "prompt": r.prompt,
            **r.sampling,
            "stop_token_ids": self.stop_token_ids,
            "skip_special_tokens": True,
            "return_token_ids": True,
            "vllm_xargs": xargs,
        }
        resp = self.client.post(f"{self.url}/v1/completions", json=body)
        data = resp.json()
        if resp.status_code != 200 or "choices" not in data:
            raise RuntimeError(f"vLLM server {self.url} answered {resp.status_code}: {data.get('error', data)}")
        choice = data["choices"][0]
        acts = decode_activations(data, fetch_bytes=lambda h: self.client.get(f"{self.url}/v1/activations/{h}").content)
        residual = acts["residual_stream"][0] if "residual_stream" in acts else None
        hooks = deserialize_hook_results(data["hook_results"]) if data.get("hook_results") else {}
        return Output(list(choice["token_ids"]), choice.get("finish_reason") or "", residual, hooks)

    def run(self, rows: Sequence[TransportRow]) -> list[Output]:
        if not rows:
            return []
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(rows), 64)) as pool:
            return list(pool.map(self._one, rows))


# ---------------------------------------------------------------- the engine
class VLLMEngine(SteeringEngine):
    def __init__(
        self,
        transport: InProcess | Server,
        tokenizer: Any,
        dictionary: FeatureDictionary | None,
        layer: int,
        n_layers: int,
        hidden_size: int,
        dtype: torch.dtype,
        name: str = "model",
        chat_template: bool = True,
        start_seconds: float = 0.0,
    ) -> None:
        self.transport = transport
        self.tokenizer = tokenizer
        self.dictionary = dictionary
        self.layer = layer
        self.n_layers, self.hidden_size = n_layers, hidden_size
        self.torch_dtype = dtype
        self.dtype = str(dtype).removeprefix("torch.")  # as the HF backend names it (threshold cache key)
        self.name = name
        self.use_chat_template = chat_template and tokenizer.chat_template is not None
        self.extra_dictionaries: dict[str, FeatureDictionary] = {}
        self.start_seconds = start_seconds  # engine start (in process) or server handshake

    @classmethod
    def load(
        cls,
        source: str,
        dictionary: str | None = None,
        layer: int | None = None,
        labels: str | None = None,
        dtype: str | None = None,
        device: str = "cpu",
        *,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        base_url: str | None = None,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        **engine_args: Any,
    ) -> "VLLMEngine":
        """`source`/`dictionary` as for the HF backend. In process unless `base_url` names a
        `vllm serve` deployment of the same weights (then `source` only supplies the tokenizer
        and config). `device` is vLLM's to choose (its build picks CPU or CUDA) and is ignored.
        `dtype` None: the preset's, else `resolve_dtype`'s (bf16 where the hardware has it)."""
        preflight(tensor_parallel_size, pipeline_parallel_size, base_url)
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        model_source, dict_spec, layer, chat_template = resolve_model(source, dictionary, layer)
        folder = plain_folder(model_source)
        preset = get_preset(source)
        if preset is not None:
            dtype = preset.placement(None, dtype)[1]
        torch_dtype = resolve_dtype(dtype, "cuda" if torch.cuda.is_available() else "cpu")
        if preset and preset.adapter:
            folder = merged_folder(folder, preset.adapter)
        text_config = AutoConfig.from_pretrained(folder).get_text_config()
        n_layers, hidden = int(text_config.num_hidden_layers), int(text_config.hidden_size)
        feature_dict = load_dictionary(dict_spec, layer=layer, labels=labels) if dict_spec else None
        if feature_dict is not None:
            if layer is not None:
                feature_dict.layer = int(layer)
            feature_dict.check_fits(hidden, n_layers)
            feature_dict.to("cpu", torch.float32)
            layer = feature_dict.layer
        else:
            layer = int(layer) if layer is not None else n_layers * 3 // 5
            if not 0 <= layer < n_layers:
                raise ValueError(f"layer {layer} is outside the model (0..{n_layers - 1}): pass -M layer=N inside it")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        stop_ids = _eos_ids(folder, tokenizer, GenerationConfig)
        start = time.perf_counter()
        if base_url is not None:
            transport: InProcess | Server = Server(base_url, layer, stop_ids)
        else:
            from vllm import LLM

            llm = LLM(
                model=folder,
                tokenizer=folder,
                dtype=str(torch_dtype).removeprefix("torch."),
                enforce_eager=True,  # vllm-lens hooks need eager mode (it forces it too)
                enable_prefix_caching=False,
                tensor_parallel_size=int(tensor_parallel_size),
                pipeline_parallel_size=int(pipeline_parallel_size),
                max_model_len=max_model_len,
                **({"max_num_seqs": int(max_num_seqs)} if max_num_seqs else {}),
                seed=0,
                **engine_args,
            )
            transport = InProcess(llm, layer, stop_ids)
        return cls(
            transport, tokenizer, feature_dict, layer, n_layers, hidden, torch_dtype, name=source,
            chat_template=chat_template, start_seconds=time.perf_counter() - start,
        )

    def add_dictionary(self, dictionary: FeatureDictionary) -> str:
        if dictionary.layer != self.layer:
            raise ValueError(f"dictionary {dictionary.name!r} is at layer {dictionary.layer}, the model steers layer {self.layer}: build it at that layer")
        dictionary.check_fits(self.hidden_size, self.n_layers)
        dictionary.to("cpu", torch.float32)
        key = self.dictionary_key(dictionary)
        self.extra_dictionaries[key] = dictionary
        return key

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        return render_prompt_ids(self.tokenizer, messages, self.use_chat_template)

    # ---------------------------------------------------------------- generation
    @staticmethod
    def _sampling(r: GenerationRequest) -> dict[str, Any]:
        s: dict[str, Any] = {
            "max_tokens": int(r.max_new_tokens),
            "temperature": float(r.temperature),
            "top_p": float(r.top_p),
            "top_k": 0,  # none: the HF backend has no top-k, whatever the model's generation config says
            "min_p": 0.0,
            "repetition_penalty": float(r.repetition_penalty),
        }
        if r.seed is not None:
            s["seed"] = int(r.seed)
        return s

    def _run(self, rows: list[TransportRow]) -> list[Output]:
        outs = self.transport.run(rows)
        for row, out in zip(rows, outs):
            if row.hooks:
                saved = out.hook_results.get("0", {})
                if "error" in saved or not saved.get("positions"):
                    raise RuntimeError(f"the clamp hook failed inside vLLM: {saved.get('error', 'it never ran')}")
        return outs

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        prompts = [self.prompt_ids(r.messages) for r in requests]
        rows, live = [], []
        for i, (r, prompt) in enumerate(zip(requests, prompts)):
            vectors, hooks = steering_objects(r.interventions, self.resolve_dictionary(r.dictionary), self.layer, self.torch_dtype)
            if r.max_new_tokens > 0:
                rows.append(TransportRow(prompt, self._sampling(r), vectors, hooks))
                live.append(i)
        results = [GenerationResult("", len(p), 0, "max_tokens", []) for p in prompts]
        eos = set(self.transport.stop_token_ids)
        for i, out in zip(live, self._run(rows)):
            toks = out.token_ids
            stopped = bool(toks) and toks[-1] in eos and out.finish_reason == "stop"
            body = toks[:-1] if stopped else toks
            text = self.tokenizer.decode(body, skip_special_tokens=True).strip()
            results[i] = GenerationResult(text, len(prompts[i]), len(toks), "stop" if stopped else "max_tokens", toks)
        return results

    # ---------------------------------------------------------------- read-out
    def _capture_rows(self, ids: list[list[int]], interventions: Sequence[Sequence[Intervention]], dictionary) -> list[torch.Tensor]:
        rows = []
        for row_ids, ivs in zip(ids, interventions):
            vectors, hooks = steering_objects(ivs, dictionary, self.layer, self.torch_dtype)
            rows.append(TransportRow(row_ids, {"max_tokens": 1, "temperature": 0.0}, vectors, hooks, capture=True))
        outs = self._run(rows)
        return [out.captured_residual()[: len(row.prompt)].float() for row, out in zip(rows, outs)]

    def prompt_residuals(self, prompts: Sequence[list[Message]], skip: int = 2) -> list[torch.Tensor]:
        ids = [self.prompt_ids(m) for m in prompts]
        return [r[skip:] for r in self._capture_rows(ids, [()] * len(ids), self.dictionary)]

    def read_latents(
        self,
        conversations: Sequence[tuple[list[Message], str]],
        latents: Sequence[int] | None = None,
        interventions: Sequence[Sequence[Intervention]] | None = None,
        batch_size: int = 8,
    ) -> list[torch.Tensor]:
        """As the HF backend: [answer_tokens, n_latents] per (messages, answer), read after any
        steering of that row. vLLM batches the rows itself, `READ_ROWS` (or more) per call."""
        if self.dictionary is None:
            raise ValueError("reading latents needs a dictionary: pass -M dictionary=... or a preset")
        idx = torch.tensor(list(latents), dtype=torch.long) if latents is not None else None
        out: list[torch.Tensor] = []
        chunk = max(batch_size, READ_ROWS)
        for start in range(0, len(conversations), chunk):
            part = conversations[start : start + chunk]
            answers = [self.tokenizer(answer, add_special_tokens=False)["input_ids"] for _, answer in part]
            ids = [self.prompt_ids(m) + a for (m, _), a in zip(part, answers)]
            ivs = interventions[start : start + chunk] if interventions is not None else [()] * len(part)
            for resid, a in zip(self._capture_rows(ids, ivs, self.dictionary), answers):
                h = resid[resid.shape[0] - len(a) :] if a else resid[:0]
                acts = self.dictionary.encode(h)
                out.append((acts[:, idx] if idx is not None else acts).float().cpu())
        return out


def _eos_ids(folder: str, tokenizer: Any, generation_config_cls: Any) -> list[int]:
    """The HF backend's stop tokens: the generation config's EOS ids and the tokenizer's."""
    ids: set[int] = set()
    try:
        eos = generation_config_cls.from_pretrained(folder).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    except OSError:
        pass
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)
