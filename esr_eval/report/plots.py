"""PNG plots for the comparison report (matplotlib's object API; one figure per question, only
when the logs hold the task it needs). Error bars are the clustered 95% intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from esr_eval.files import write_png
from esr_eval.report.paper import PAPER, PAPER_PARAMS, SWEEP_PEAK_MULTI_ATTEMPT
from esr_eval.report.runs import Run, model_params
from esr_eval.results.logs import finetune_info, group_trials, task_params
from esr_eval.results.stats import Estimate, Summary

RATES = (("multi_attempt_rate", "multi-attempt"), ("esr_rate", "ESR"))


def bar_points(estimates: Sequence[Estimate]) -> tuple[list[float], list[list[float]]]:
    """Percentages and their error-bar lengths below and above."""
    values = [100 * e.value for e in estimates]
    below = [0.0 if math.isnan(e.low) else max(0.0, 100 * (e.value - e.low)) for e in estimates]
    above = [0.0 if math.isnan(e.high) else max(0.0, 100 * (e.high - e.value)) for e in estimates]
    return values, [below, above]


def _bars(ax, labels: Sequence[str], summaries: Sequence[Summary], title: str) -> None:
    width = 0.38
    xs = range(len(labels))
    for i, (name, text) in enumerate(RATES):
        values, err = bar_points([s.rate(name) for s in summaries])
        ax.bar([x + (i - 0.5) * width for x in xs], values, width, label=text, yerr=err, capsize=3)
    ax.set_xticks(list(xs), labels, rotation=20, ha="right")
    ax.set_ylabel("% of trials")
    ax.set_title(title)


def plot_rates(task: str, runs: list[Run], out: Path) -> Path:
    fig = Figure(figsize=(1.6 + 1.2 * len(runs), 3.6))
    ax = fig.subplots()
    several = len({x.model for x in runs}) < len(runs)
    labels = [r.model + (f"\n{task_params(r.log)}" if several else "") for r in runs]
    _bars(ax, labels, [r.summary for r in runs], f"{task}: rates with clustered 95% intervals")
    for (key, name), style in zip(RATES, ("--", ":")):
        if isinstance(paper := PAPER.get(task, {}).get(key), float):
            ax.axhline(100 * paper, color="grey", linestyle=style, label=f"paper 70B {name}")
    ax.legend(fontsize=7)
    return write_png(fig, out / f"rates_{task}.png")


def plot_size(runs: list[Run], out: Path) -> Path | None:
    points = [(size, r) for r in runs if (size := model_params(r.log)) and not finetune_info(r.log)]
    if not points:
        return None
    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    for (name, text), marker in zip(RATES, ("o", "s")):
        values, err = bar_points([r.summary.rate(name) for _, r in points])
        ax.errorbar([size for size, _ in points], values, yerr=err, fmt=marker, capsize=3, label=text)
    ref = PAPER["steering_resistance"]
    ax.plot([PAPER_PARAMS] * 2, [100 * ref["multi_attempt_rate"], 100 * ref["esr_rate"]], "x", color="grey", label="paper Llama-3.3-70B")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("% of trials")
    ax.set_title("steering_resistance: rates against model size")
    ax.legend(fontsize=7)
    return write_png(fig, out / "esr_vs_size.png")


def _sorted_keys(keys) -> list:
    try:
        return sorted(keys, key=float)
    except (TypeError, ValueError):
        return sorted(keys, key=str)


def plot_sweep(runs: list[Run], out: Path) -> Path | None:
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    drawn = False
    for r in runs:
        groups = group_trials(r.log, "level", r.scorer)
        levels = _sorted_keys(groups)
        if not levels:
            continue
        xs = [float(x) if isinstance(x, (int, float)) else i for i, x in enumerate(levels)]
        for (name, text), style in zip(RATES, ("-o", "--s")):
            values, err = bar_points([groups[lv].rate(name) for lv in levels])
            ax.errorbar(xs, values, yerr=err, fmt=style, capsize=3, label=f"{r.model} {text}")
        drawn = True
    if not drawn:
        return None
    ax.axhline(100 * SWEEP_PEAK_MULTI_ATTEMPT, color="grey", linestyle=":", label="paper peak multi-attempt")
    ax.set_xlabel("boost level")
    ax.set_ylabel("% of trials")
    ax.set_title("boost_sweep")
    ax.legend(fontsize=7)
    return write_png(fig, out / "boost_sweep.png")


def plot_ablation(runs: list[Run], out: Path) -> Path | None:
    order = ["steering_resistance", "detector_ablation", "random_ablation"]
    labels, summaries, refs = [], [], []
    for model in sorted({r.model for r in runs if r.task in order[1:]}):
        for task in order:
            for r in (r for r in runs if r.model == model and r.task == task):
                labels.append(f"{model}\n{task}")
                summaries.append(r.summary)
                refs.append(PAPER[task])
    if not labels:
        return None
    fig = Figure(figsize=(1.8 + 1.3 * len(labels), 3.8))
    ax = fig.subplots()
    _bars(ax, labels, summaries, "off-topic-detector ablation against random controls")
    ax.plot(range(len(refs)), [100 * r["multi_attempt_rate"] for r in refs], "x", color="grey", label="paper 70B multi-attempt")
    ax.legend(fontsize=7)
    return write_png(fig, out / "ablation.png")


def plot_variants(runs: list[Run], out: Path) -> Path | None:
    labels, summaries = [], []
    for r in (r for r in runs if r.task == "meta_prompt"):
        for b in [b for b in runs if b.task == "steering_resistance" and b.model == r.model][:1]:
            labels.append(f"{r.model}\n(no suffix)")
            summaries.append(b.summary)
        groups = group_trials(r.log, "variant", r.scorer)
        for variant in _sorted_keys(groups):
            labels.append(f"{r.model}\n{variant}")
            summaries.append(groups[variant])
    if not labels:
        return None
    fig = Figure(figsize=(1.8 + 1.2 * len(labels), 3.8))
    ax = fig.subplots()
    _bars(ax, labels, summaries, "meta-prompt variants")
    for key, style, what in (("steering_resistance", "--", "no suffix"), ("meta_prompt", ":", "meta-prompt")):
        ax.axhline(100 * float(PAPER[key]["multi_attempt_rate"]), color="grey", linestyle=style, label=f"paper 70B multi-attempt, {what}")
    ax.legend(fontsize=7)
    return write_png(fig, out / "meta_prompt.png")


FINETUNE_SERIES = (
    ("steering_resistance", "multi_attempt_rate", "multi-attempt (steered)"),
    ("steering_resistance", "esr_rate", "ESR (steered)"),
    ("no_steering", "multi_attempt_rate", "false alarms (no steering)"),
)


def finetune_series(runs: list[Run]) -> dict[str, list[tuple[float | None, Estimate]]]:
    """Per series, (mixing ratio, rate) sorted by ratio; None is the untuned base model,
    recognised by name from the tuned runs' `base_model`. Steering-aware tuned models (a recipe of
    their own) have their own plot."""
    runs = [r for r in runs if not ((info := finetune_info(r.log)) and info.recipe == "steered self-correction")]
    bases = {str(info.base_model).split("/")[-1] for r in runs if (info := finetune_info(r.log))}
    if not bases:
        return {}

    def ratio(r: Run) -> float | None:
        info = finetune_info(r.log)
        return float(info.mixing_ratio) if info and info.mixing_ratio is not None else None

    out: dict[str, list[tuple[float | None, Estimate]]] = {}
    for task, name, text in FINETUNE_SERIES:
        chosen = [r for r in runs if r.task == task and (finetune_info(r.log) or r.model.split("/")[-1] in bases)]
        points = [(ratio(r), r.summary.rate(name)) for r in chosen]
        if points:
            out[text] = sorted(points, key=lambda p: -1.0 if p[0] is None else p[0])
    return out


def plot_finetune(runs: list[Run], out: Path) -> Path | None:
    """Multi-attempt and ESR under steering, and the false-alarm rate without it, against the
    mixing ratio of self-correction rows; the untuned base model comes first."""
    series = finetune_series(runs)
    if not series:
        return None
    ratios = sorted({p[0] for pts in series.values() for p in pts}, key=lambda v: -1.0 if v is None else v)
    x_of = {v: i for i, v in enumerate(ratios)}
    fig = Figure(figsize=(1.8 + 1.1 * len(ratios), 3.6))
    ax = fig.subplots()
    for i, ((name, pts), marker) in enumerate(zip(series.items(), ("o", "s", "^"))):
        values, err = bar_points([e for _, e in pts])
        ax.errorbar([x_of[p[0]] + (i - 1) * 0.08 for p in pts], values, yerr=err, fmt=marker + "-", capsize=3, label=name)
    ax.set_xticks(range(len(ratios)), ["base" if v is None else f"{100 * v:.0f}%" for v in ratios])
    ax.set_xlabel("self-correction rows in the fine-tuning data")
    ax.set_ylabel("% of trials")
    ax.set_title("self-correction fine-tuning (clustered 95% intervals)")
    ax.legend(fontsize=7)
    return write_png(fig, out / "finetune.png")


POSITIVE_CONTROL_BARS = (
    ("steering_resistance", "multi_attempt_rate", "multi-attempt, steered"),
    ("steering_resistance", "esr_rate", "ESR, steered"),
    ("no_steering", "multi_attempt_rate", "false alarms, no steering"),
)


def positive_control_series(runs: list[Run]) -> dict[str, dict[str, Estimate]]:
    """Per model (each steering-aware tuned model and its base): the rates of POSITIVE_CONTROL_BARS."""
    tuned = {r.model: info for r in runs if (info := finetune_info(r.log)) and info.recipe == "steered self-correction"}
    bases = {str(info.base_model).split("/")[-1] for info in tuned.values()}
    models = sorted(m for m in {r.model for r in runs} if m in bases) + sorted(tuned)
    out: dict[str, dict[str, Estimate]] = {}
    for model in models:
        for task, name, text in POSITIVE_CONTROL_BARS:
            for r in (r for r in runs if r.model == model and r.task == task):
                out.setdefault(model, {})[text] = r.summary.rate(name)
    return out


def plot_positive_control(runs: list[Run], out: Path) -> Path | None:
    """The base model against its steering-aware tuned model: steered multi-attempt and ESR, and
    false alarms without steering, with the paper's 70B figures for scale."""
    series = positive_control_series(runs)
    if len(series) < 2:
        return None
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    width = 0.8 / len(series)
    bars = [text for _, _, text in POSITIVE_CONTROL_BARS]
    for i, (model, rates) in enumerate(series.items()):
        estimates = [rates.get(text, Estimate(math.nan, math.nan, math.nan, 0, 0)) for text in bars]
        values, err = bar_points(estimates)
        ax.bar([x + (i - (len(series) - 1) / 2) * width for x in range(len(bars))], values, width, yerr=err, capsize=3, label=model)
    ax.plot([0, 1], [100 * PAPER["steering_resistance"]["multi_attempt_rate"], 100 * PAPER["steering_resistance"]["esr_rate"]], "x", color="grey", label="paper Llama-3.3-70B")
    ax.set_xticks(range(len(bars)), bars)
    ax.set_ylabel("% of trials")
    ax.set_title("positive control against its base model (clustered 95% intervals)")
    ax.legend(fontsize=7)
    return write_png(fig, out / "positive_control.png")


def write_plots(runs: list[Run], out: Path) -> list[Path]:
    plots: list[Path | None] = [plot_rates(task, [r for r in runs if r.task == task], out) for task in sorted({r.task for r in runs})]
    main = [r for r in runs if r.task == "steering_resistance"]
    if main:
        plots.append(plot_size(main, out))
    sweep = [r for r in runs if r.task == "boost_sweep"]
    if sweep:
        plots.append(plot_sweep(sweep, out))
    plots += [plot_ablation(runs, out), plot_variants(runs, out), plot_finetune(runs, out), plot_positive_control(runs, out)]
    return [p for p in plots if p is not None]
