"""Prompt files, read by one parser: `.txt` (one prompt a line, `#` comments), `.jsonl` (a
prompt / text / input / question field, optional id) or `.csv` (the same columns). A shipped set
is also named by its file's stem (`explain_how`, `factual`)."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from esr_eval.config import asset_path
from esr_eval.errors import DataFileError, MissingFileError, UsageError
from esr_eval.files import read_jsonl, read_text

ASSETS = asset_path("prompts")
DEFAULT_PROMPTS = ASSETS / "explain_how.jsonl"  # the evaluation set: 42 everyday "explain how" prompts
FACTUAL_PROMPTS = ASSETS / "factual.jsonl"  # 46 general-knowledge "what / describe / compare" questions
PROMPT_FIELDS = ("prompt", "text", "input", "question")
SUFFIXES = (".txt", ".jsonl", ".csv")
FIX = "give one prompt a line (.txt), or a `prompt` field per row (.jsonl, .csv)"


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


def _field(row: dict, path: Path, line: int) -> str:
    key = next((k for k in PROMPT_FIELDS if row.get(k)), None)
    if key is None:
        raise DataFileError(path, line, f"has none of the fields {', '.join(PROMPT_FIELDS)}", FIX)
    return str(row[key]).strip()


def shipped_sets() -> dict[str, Path]:
    """The packaged prompt sets by name (the file's stem)."""
    return {p.stem: p for p in sorted(ASSETS.iterdir()) if p.suffix in SUFFIXES}


def resolve_prompts(spec: str | Path | None = None) -> Path:
    """The file a prompts argument names: an existing path, else a shipped set's name; None: the
    packaged evaluation set."""
    if spec is None:
        return DEFAULT_PROMPTS
    path = Path(spec).expanduser()
    if path.is_file() or path.suffix or len(path.parts) > 1:
        return path
    found = shipped_sets().get(str(spec))
    if found is None:
        raise UsageError(
            f"prompts {spec!r} is neither a file nor a shipped prompt set: pass a .txt, .jsonl or .csv file, "
            f"or one of {', '.join(shipped_sets())}"
        )
    return found


def prompt_set_name(spec: str | Path | None = None) -> str:
    """A shipped set's name, else the file's path as given."""
    path = resolve_prompts(spec)
    return path.stem if shipped_sets().get(path.stem) == path.resolve() else str(spec)


def normalized(text: str) -> str:
    """What makes two prompts the same prompt: case and runs of whitespace do not."""
    return re.sub(r"\s+", " ", text).strip().lower()


def prompt_hash(text: str) -> str:
    """A short hash of one prompt's normalized text (detectors files record these)."""
    return hashlib.sha1(normalized(text).encode()).hexdigest()[:12]


def load_prompts(path: str | Path | None = None) -> list[Prompt]:
    """The prompts of a file or shipped set (default: the packaged evaluation set), in file order."""
    path = resolve_prompts(path)
    if not path.is_file():
        raise MissingFileError(f"prompt file {path} does not exist: pass an existing .txt, .jsonl or .csv file")
    if path.suffix not in SUFFIXES:
        raise UsageError(f"prompt file {path} is neither .txt, .jsonl nor .csv: {FIX}")
    rows: list[tuple[str | None, str]] = []
    if path.suffix == ".jsonl":
        for i, row in enumerate(read_jsonl(path, "prompt file", FIX), 1):
            rows.append((None if row.get("id") is None else str(row["id"]), _field(row, path, i)))
    elif path.suffix == ".csv":
        with io.StringIO(read_text(path), newline="") as fh:
            reader = csv.DictReader(fh)
            for i, row in enumerate(reader, 2):  # line 1 is the header
                rows.append((row.get("id") or None, _field(row, path, i)))
    else:
        lines = (line.strip() for line in read_text(path).splitlines())
        rows = [(None, line) for line in lines if line and not line.startswith("#")]
    prompts = [Prompt(str(i) if pid is None else pid, text) for i, (pid, text) in enumerate(rows) if text]
    if not prompts:
        raise DataFileError(path, None, "holds no prompts", FIX)
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DataFileError(path, None, f"uses the prompt id {duplicate!r} twice", "give every prompt its own id")
    return prompts


def prompt_texts(path: str | Path | None = None) -> list[str]:
    return [p.text for p in load_prompts(path)]
