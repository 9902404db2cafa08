"""`esr-eval compare --models a,b --log-dir DIR`: one task over several models as an Inspect eval set,
then the comparison table.

The equivalent Inspect command (rerunning it skips the logs that already finished):

  inspect eval-set esr_eval/steering_resistance \\
      --model steered/smollm2-135m,steered/gemma-3-270m \\
      -T n_latents=20 --model-role grader=openai/gpt-4o-mini --log-dir logs/compare
  esr-eval report logs/compare

Exit status: 0 when every run succeeded, 3 when some did not (the table still prints).
"""

from __future__ import annotations

import argparse


def _compare(args: argparse.Namespace) -> int:
    from inspect_ai import eval_set

    from esr_eval.cli.report import print_tables
    from esr_eval.gate.eval_set_args import model_names, parse_kv
    from esr_eval.report.runs import load_runs
    from esr_eval.report.tables import tables

    models = model_names(args.models)
    task_args = parse_kv(args.task_arg, "-T")
    model_args = parse_kv(args.model_arg, "-M")
    roles = parse_kv(args.model_role, "--model-role")
    success, _ = eval_set(
        tasks=args.task,
        model=models,
        log_dir=args.log_dir,
        task_args=task_args,
        model_args=model_args,
        model_roles={k: str(v) for k, v in roles.items()} or None,
        limit=args.limit,
        epochs=args.epochs,
        max_connections=args.max_connections,
        display=args.display,
    )
    print_tables(tables(load_runs([args.log_dir])))
    return 0 if success else 3


def add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="run one task over several models (Inspect eval set) and compare them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", required=True, help="comma-separated presets or sources (become steered/<x>)")
    p.add_argument("--task", default="esr_eval/steering_resistance", help="registry name or file.py@task")
    p.add_argument("-T", dest="task_arg", action="append", default=[], metavar="K=V", help="task argument")
    p.add_argument(
        "-M", dest="model_arg", action="append", default=[], metavar="K=V", help="model argument (all models)"
    )
    p.add_argument(
        "--model-role", action="append", default=[], metavar="ROLE=MODEL", help="e.g. grader=openai/gpt-4o-mini"
    )
    p.add_argument("--log-dir", required=True, help="eval-set log folder (one log per model)")
    p.add_argument("--limit", type=int, help="samples per model")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-connections", type=int)
    p.add_argument("--display", default=None, choices=["full", "rich", "plain", "log", "none"])
    p.set_defaults(func=_compare)
