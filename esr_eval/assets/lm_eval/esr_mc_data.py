"""Loader for the esr_mc lm-eval task: the packaged jsonl, found beside this file at run time."""

from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load(data_files: str = "esr_mc.jsonl", **_):
    """`datasets`' json builder over the packaged file (a relative path is taken from this folder)."""
    path = Path(data_files)
    path = path if path.is_absolute() else HERE / path
    return datasets.load_dataset("json", data_files={"test": str(path)})
