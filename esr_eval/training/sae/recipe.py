"""The recipe behind `esr-eval train-sae`: a TopK SAE (sae-lens format) on a model's own answers, with labels.

Steps, each cached under the user cache dir: generate the corpus (the model answering
everyday prompts, no steering), collect residuals at `model.layers.L`, train, measure
(explained variance and dead latents on held-out documents, L0, CE loss recovered), label.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def _check_args(args: argparse.Namespace) -> None:
    if args.width <= 0 or not 0 < args.k < args.width:
        raise ValueError(f"--k {args.k} must be between 1 and --width {args.width} - 1: pick a smaller k")
    if args.tokens < 100:
        raise ValueError(f"--tokens {args.tokens} is too few to train on: ask for at least 100")
    if not 0 <= args.pydoc_share < 1 or not 0 < args.heldout_share < 1:
        raise ValueError("--pydoc-share must be in [0, 1) and --heldout-share in (0, 1): fix the share")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file: give a folder path")


def _load_model(args: argparse.Namespace):
    from esr_eval.steering.hooks import decoder_layers
    from esr_eval.steering.models import load_causal_lm
    from esr_eval.steering.presets import get_preset

    preset = get_preset(args.model)
    source = preset.model_source() if preset else args.model
    if not str(source).endswith(".gguf"):  # a config read is enough to check the layer
        from transformers import AutoConfig

        n_layers = AutoConfig.from_pretrained(source).get_text_config().num_hidden_layers
        _check_layer(args, n_layers)
    model, tokenizer = load_causal_lm(source, dtype=args.dtype, device=args.device)
    _check_layer(args, len(decoder_layers(model)))
    return model, tokenizer, preset


def _check_layer(args: argparse.Namespace, n_layers: int) -> None:
    if not 0 <= args.layer < n_layers:
        raise ValueError(f"--layer {args.layer} is outside {args.model} (layers 0..{n_layers - 1}): pick a layer inside it")


def _arguments(args: argparse.Namespace) -> dict:
    skip = ("func", "command", "generation_threads")  # speed only: the results do not depend on it
    return {k: v for k, v in vars(args).items() if k not in skip}


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (every option spelled out)."""
    parts = ["esr-eval", "train-sae"]
    for key, value in _arguments(args).items():
        if value is not None:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    return " ".join(parts)


def corpus_spec(args: argparse.Namespace, preset=None):
    from esr_eval.config import GENERATION
    from esr_eval.training.sae.corpus import CorpusSpec

    penalty = args.repetition_penalty
    if penalty is None:
        penalty = preset.repetition_penalty if preset else GENERATION.repetition_penalty
    return CorpusSpec(
        model=args.model, seed=args.seed, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        repetition_penalty=penalty, batch_size=args.gen_batch, pydoc_share=args.pydoc_share,
        heldout_share=args.heldout_share,
    )


def _corpus(args: argparse.Namespace, model, tokenizer, preset) -> tuple[list[dict], list[dict]]:
    from esr_eval.steering.backends.hf import HFEngine
    from esr_eval.training.sae.corpus import build_corpus

    engine = HFEngine(model, tokenizer, None, layer=args.layer, name=args.model,
                       chat_template=preset.chat_template if preset else True)
    return build_corpus(engine, corpus_spec(args, preset), args.tokens)


def _activations(args: argparse.Namespace, model, train_docs: list[dict], held_docs: list[dict], median=None):
    """(train, held-out, median norm): residuals with outlier positions dropped, train capped at --tokens."""
    import torch

    from esr_eval.training.sae.activations import cached_collect, drop_outliers

    train = cached_collect(model, train_docs, args.layer, args.model, args.dtype, "activations (train)")
    held = cached_collect(model, held_docs, args.layer, args.model, args.dtype, "activations (held-out)")
    train, median = drop_outliers(train, args.max_norm_ratio, median)
    held, _ = drop_outliers(held, args.max_norm_ratio, median)
    return train.select(torch.arange(min(len(train), args.tokens))), held, median


LABELS_OFFLINE = ("offline: the nearest concept-vocabulary topic to the top contexts (all-MiniLM-L6-v2) for latents "
                  "whose contexts share a topic and that fire on words; top firing tokens; context: distinctive words otherwise")


def _label(dictionary, tokenizer, train_docs, held_docs, train, held, n_examples: int, labeler: str | None):
    """Top examples of every latent over train + held-out text; labels and concept stats from them."""
    import torch

    from esr_eval.training.sae.activations import Activations
    from esr_eval.training.sae.concepts import N_EXAMPLES, baseline_coherence
    from esr_eval.training.sae.labeling import label_latents, top_examples

    everything = Activations(*(torch.cat([a, b]) for a, b in zip(
        (train.acts, train.tokens, train.doc, train.pos),
        (held.acts, held.tokens, held.doc + len(train_docs), held.pos))))
    docs = train_docs + held_docs
    examples = top_examples(dictionary.encode, everything.acts, dictionary.d_sae, n_examples=max(n_examples, N_EXAMPLES))
    labels, concepts = label_latents(tokenizer, docs, everything.doc, everything.pos, examples, labeler, n_examples)
    summary = _concept_summary(concepts, baseline_coherence(tokenizer, docs, everything.doc, everything.pos))
    return examples, labels, concepts, summary


def _concept_summary(concepts: dict, baseline: dict[str, float]) -> dict:
    """What training.json records about the concept stats: the filter's shares and the
    coherence distribution beside that of random contexts."""
    import numpy as np

    from esr_eval.config import CONCEPT_FILTER
    from esr_eval.training.sae.concepts import (
        VOCABULARY_FILE,
        is_token_level,
        is_topical,
        load_vocabulary,
    )

    stats = list(concepts.values())
    n = max(1, len(stats))
    values = np.array([c.coherence for c in stats]) if stats else np.zeros(1)
    token_level = [is_token_level(c) for c in stats]
    topical = [is_topical(c) for c in stats]
    return {
        "vocabulary": f"esr_eval/assets/concepts/{VOCABULARY_FILE.name} ({len(load_vocabulary())} topics)",
        "filter": CONCEPT_FILTER.__dict__,
        "live_latents": len(stats),
        "token_level_share": sum(token_level) / n,
        "no_topic_share": sum(not t and not k for t, k in zip(topical, token_level)) / n,
        "kept_share": sum(t and not k for t, k in zip(topical, token_level)) / n,
        "coherence_quantiles": {str(q): float(np.quantile(values, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        "random_context_coherence": baseline,
    }


def train_sae(args: argparse.Namespace) -> dict:
    """Run the whole recipe; returns the training record written to `training.json`."""
    import torch
    from rich.console import Console

    from esr_eval.files import atomic_directory
    from esr_eval.steering.dictionary import load_dictionary
    from esr_eval.training.sae.labeling import latent_stats
    from esr_eval.training.sae.trainer import (
        TrainConfig,
        ce_loss_recovered,
        quality,
        train_topk_sae,
    )

    _check_args(args)
    started = time.time()
    torch.manual_seed(args.seed)
    threads = torch.get_num_threads()
    if args.generation_threads:
        torch.set_num_threads(args.generation_threads)
    model, tokenizer, preset = _load_model(args)
    spec = corpus_spec(args, preset)
    train_docs, held_docs = _corpus(args, model, tokenizer, preset)
    torch.set_num_threads(threads)
    t_corpus = time.time()
    hook_name = f"model.layers.{args.layer}"
    train, held, median = _activations(args, model, train_docs, held_docs)
    cfg = TrainConfig(d_sae=args.width, k=args.k, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      dead_window=min(args.dead_window, max(len(train) // 4, args.batch_size)),
                      aux_loss_coefficient=args.aux_coefficient, seed=args.seed)
    sae = train_topk_sae(train.acts, cfg, hook_name, args.model)
    t_train = time.time()

    out = Path(args.out)
    with atomic_directory(out) as tmp:
        sae.save_inference_model(tmp)
        shipped = load_dictionary(str(tmp))  # measure exactly what ships
        metrics: dict[str, Any] = {
            "heldout": quality(shipped.encode, shipped.decode, held.acts),
            "train_sample": quality(shipped.encode, shipped.decode, train.acts[
                torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:20_000]]),
        }
        answer_rows = torch.tensor([held_docs[int(i)]["source"] == "answer" for i in held.doc])
        if args.pydoc_share and bool(answer_rows.any()):
            metrics["heldout_answers_only"] = quality(shipped.encode, shipped.decode, held.acts[answer_rows])
        if args.ce_docs:
            metrics["heldout"].update(ce_loss_recovered(model, held_docs[: args.ce_docs], args.layer, shipped.encode,
                                                        shipped.decode, args.max_norm_ratio * median))
        examples, labels, concepts, concept_summary = _label(shipped, tokenizer, train_docs, held_docs, train, held,
                                                             args.n_examples, args.labeler)
        metrics["dead_fraction"] = float((examples.frequency == 0).float().mean())  # never fires on the corpus
        skip = next((d["skip"] for d in train_docs if d["source"] == "answer"), train_docs[0]["skip"])
        record = {
            "command": _command(args),
            "arguments": _arguments(args),
            "hook_name": hook_name,
            "corpus": {
                "description": spec.describe(),
                "documents_train": len(train_docs),
                "documents_heldout": len(held_docs),
                "tokens_train": len(train),
                "tokens_heldout": len(held),
                "median_norm": median,
                "skip_positions": skip,
                "dropped": f"the first {skip} positions of each answer (the prompt prefix all conversations share, "
                f"with BOS and the huge-norm position after it), the first 2 of each pydoc chunk, and positions "
                f"with norm > {args.max_norm_ratio} x the median ({median:.1f})",
            },
            "train_config": cfg.__dict__,
            "quality": metrics,
            "labels": f"LLM ({args.labeler})" if args.labeler else LABELS_OFFLINE,
            "n_labels": len(labels),
            "concepts": concept_summary,
            "seconds": {"corpus": round(t_corpus - started), "training_with_collection": round(t_train - t_corpus),
                        "total": round(time.time() - started)},
        }
        cfg_path = tmp / "cfg.json"
        sae_cfg = json.loads(cfg_path.read_text())
        summary = {**metrics["heldout"], "dead_fraction_corpus": metrics["dead_fraction"]}
        sae_cfg["metadata"]["esr_eval_training"] = {"quality": summary, "recipe": record["command"],
                                                    "seed": args.seed, "see": "training.json"}
        cfg_path.write_text(json.dumps(sae_cfg, indent=2))
        (tmp / "training.json").write_text(json.dumps(record, indent=2))
        (tmp / "labels.json").write_text(json.dumps({str(k): v for k, v in sorted(labels.items())}, indent=1))
        (tmp / "latent_stats.json").write_text(json.dumps(latent_stats(examples, concepts)))
        os.chmod(tmp, 0o755)  # a temporary folder starts private; the SAE ships readable
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
    h = metrics["heldout"]
    Console().print(
        f"[bold]{out}[/]: held-out explained variance {h['explained_variance']:.3f}, dead {metrics['dead_fraction']:.1%}, "
        f"L0 {h['l0']:.1f}" + (f", CE loss recovered {h['ce_loss_recovered']:.1%}" if "ce_loss_recovered" in h else "")
        + f"; {len(labels)} labels; {record['seconds']['total']} s"
    )
    return record


def _merge_partial(folder: Path, labels: dict[int, str], stats: dict[str, dict]) -> tuple[dict[int, str], dict]:
    """Labels from part of the corpus over the earlier ones: frequency and max activation stay
    the whole corpus's, a latent that did not fire in the part keeps its earlier label."""
    from esr_eval.steering.dictionary import read_labels

    old_labels = read_labels(folder / "labels.json") if (folder / "labels.json").exists() else {}
    old_stats = json.loads((folder / "latent_stats.json").read_text()) if (folder / "latent_stats.json").exists() else {}
    merged = {}
    for key, entry in stats.items():
        before = old_stats.get(key, {})
        fresh = {k: v for k, v in entry.items() if k not in ("frequency", "max_activation")} if entry["frequency"] > 0 else {}
        merged[key] = {"frequency": before.get("frequency", entry["frequency"]),
                       "max_activation": before.get("max_activation", entry["max_activation"]), **fresh}
    return {**old_labels, **labels}, merged


def label_sae(args: argparse.Namespace) -> dict[int, str]:
    """Relabel a folder written by train-sae (its corpus and activations come from the cache;
    `--tokens` labels from the first tokens of that corpus only, `--dtype` collects in another dtype)."""
    from esr_eval.files import atomic_write_text
    from esr_eval.steering.dictionary import load_dictionary
    from esr_eval.training.sae.labeling import latent_stats

    folder = Path(args.sae)
    if not (folder / "training.json").exists():
        raise FileNotFoundError(f"{folder / 'training.json'} is missing: point --sae at a folder written by train-sae")
    record = json.loads((folder / "training.json").read_text())
    targs = argparse.Namespace(**record["arguments"])
    if getattr(args, "tokens", None):
        if args.tokens < 100:
            raise ValueError(f"--tokens {args.tokens} is too few to label from: ask for at least 100")
        targs.tokens = min(args.tokens, targs.tokens)
    targs.dtype = getattr(args, "dtype", None) or targs.dtype
    dictionary = load_dictionary(str(folder))
    model, tokenizer, preset = _load_model(targs)
    train_docs, held_docs = _corpus(targs, model, tokenizer, preset)
    train, held, _ = _activations(targs, model, train_docs, held_docs, record["corpus"]["median_norm"])
    examples, labels, concepts, summary = _label(dictionary, tokenizer, train_docs, held_docs, train, held,
                                                 args.n_examples, args.labeler)
    stats = latent_stats(examples, concepts)
    partial = targs.tokens < record["arguments"]["tokens"]
    if partial:
        labels, stats = _merge_partial(folder, labels, stats)
    atomic_write_text(folder / "labels.json", json.dumps({str(k): v for k, v in sorted(labels.items())}, indent=1))
    atomic_write_text(folder / "latent_stats.json", json.dumps(stats))
    record["labels"] = f"LLM ({args.labeler})" if args.labeler else LABELS_OFFLINE
    record["n_labels"] = len(labels)
    record["concepts"] = summary
    record["labelling"] = {
        "command": " ".join(["esr-eval", "label-sae", "--sae", str(args.sae), "--n-examples", str(args.n_examples)]
                            + (["--tokens", str(args.tokens)] if getattr(args, "tokens", None) else [])
                            + (["--dtype", args.dtype] if getattr(args, "dtype", None) else [])
                            + (["--labeler", str(args.labeler)] if args.labeler else [])),
        "tokens_labelled": len(train) + len(held),
        "dtype": targs.dtype,
        **({"partial": "labels and concept stats from the first tokens of the corpus; firing frequency and max "
                       "activation stay those of the whole training corpus; latents that do not fire in that part "
                       "keep their earlier label and have no concept stats"} if partial else {}),
    }
    atomic_write_text(folder / "training.json", json.dumps(record, indent=2))
    print(f"{folder}: {len(labels)} labels ({record['labels']}); token-level {summary['token_level_share']:.1%}, "
          f"no topic {summary['no_topic_share']:.1%}, kept {summary['kept_share']:.1%} of {summary['live_latents']} live latents")
    return labels
