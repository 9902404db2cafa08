"""Reading and writing the project's files: one jsonl reader whose errors name the file, the line
and the fix; atomic writes (a crash never leaves a half-written cache or output behind); and a
locked read-modify-write for caches that several processes share."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esr_eval.errors import DataFileError, MissingFileError, UsageError

logger = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a temporary sibling, then rename it over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    return atomic_write_text(path, jsonl_text(rows))


@dataclass
class JsonlContent:
    """The rows of a jsonl file, and the lines that are not JSON objects (1-based numbers and
    their raw text), so a cache can report them and keep them on rewrite instead of losing them."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


def _parse_jsonl(text: str) -> JsonlContent:
    content = JsonlContent()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            content.rows.append(row)
        else:
            content.bad_lines.append((number, line))
    return content


def read_text(path: str | Path) -> str:
    """A user's text file; bytes that are not UTF-8 are an error naming the file and the line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataFileError(path, line, f"is not UTF-8 text (byte {data[err.start]:#04x})", "save the file as UTF-8") from None


def check_writable(path: str | Path, what: str, fix: str) -> None:
    """Refuse, before any work, a file that could not be written later: its folder cannot be made
    (a file sits where a folder should) or takes no new files (atomic writes and the lock need both)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", suffix=".probe", dir=path.parent):
            pass
    except OSError as err:
        blocker = next((p for p in path.parents if p.exists()), None)
        reason = f"{blocker} is a file" if blocker is not None and not blocker.is_dir() else (err.strerror or str(err)).lower()
        raise UsageError(f"{what} {path} cannot be written ({reason}): {fix}") from None


def read_jsonl(path: str | Path, what: str = "jsonl file", fix: str | None = None) -> list[dict[str, Any]]:
    """The rows of a user's jsonl file; a line that is not a JSON object is an error naming the
    file, the line and `fix`."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist: {fix or 'check the path'}")
    content = _parse_jsonl(read_text(path))
    if content.bad_lines:
        number, line = content.bad_lines[0]
        raise DataFileError(
            path, number, f"is not a JSON object ({line[:40]!r})", fix or "write one JSON object per line"
        )
    return content.rows


def read_jsonl_cache(path: str | Path) -> JsonlContent:
    """A cache's rows; lines that do not parse (a writer killed mid-line elsewhere, a hand edit)
    are logged with their number and returned, never silently dropped."""
    path = Path(path)
    if not path.exists():
        return JsonlContent()
    content = _parse_jsonl(path.read_text())
    for number, _ in content.bad_lines:
        logger.warning(f"{path} line {number} is not a JSON object: skipped (delete the line to silence this)")
    return content


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """An inter-process lock beside `path` (filelock), for read-modify-write of shared caches."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        yield


def update_jsonl_cache(path: str | Path, update: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Rewrite a cache as `update(rows)` under the lock, so two processes writing one cache both
    keep their rows; unreadable lines are carried over as they were."""
    path = Path(path)
    with locked(path):
        content = read_jsonl_cache(path)
        text = jsonl_text(update(content.rows)) + "".join(line + "\n" for _, line in content.bad_lines)
        atomic_write_text(path, text)


def read_json(path: str | Path, what: str = "JSON file", fix: str | None = None) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist: {fix or 'check the path'}")
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataFileError(path, err.lineno, f"is not valid JSON ({err.msg})", fix or "fix the JSON") from None


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes a private folder; the result is shared like any other
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_png(figure: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())
