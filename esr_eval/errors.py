"""Errors that a user can fix: one line that names the fix, raised before any expensive work."""

from __future__ import annotations

from pathlib import Path

# Inspect prints a PrerequisiteError as its message alone, without a traceback; it has no
# public alias, so the private path is imported here, in one place.
from inspect_ai._util.error import PrerequisiteError


class UsageError(PrerequisiteError, ValueError):
    """Bad input. `inspect eval` shows the message alone; `esr-eval` prints it and exits 2."""

    def __init__(self, message: str) -> None:
        from rich.markup import escape

        # Inspect prints `.message` with rich, which would read `esr-eval[vllm]` as markup and
        # drop it; str() stays the plain text (the esr-eval command and tests print that).
        PrerequisiteError.__init__(self, escape(message))
        ValueError.__init__(self, message)
        self.text = message

    def __str__(self) -> str:
        return self.text


class MissingFileError(UsageError, FileNotFoundError):
    """A file the user named (or a command should have written) is not there."""


class DataFileError(UsageError):
    """A data file that does not parse: names the file, the line and the fix."""

    def __init__(self, path: str | Path, line: int | None, problem: str, fix: str) -> None:
        where = f"{path} line {line}" if line is not None else str(path)
        super().__init__(f"{where} {problem}: {fix}")
        self.path, self.line = Path(path), line


def unknown_names(given: dict | set | list, accepted: list[str] | set[str], what: str) -> None:
    """Refuse misspelt argument names (`-T n_latent=2`), listing the accepted ones."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise UsageError(f"unknown {what}: {', '.join(unknown)}; accepted are {', '.join(sorted(accepted))}")
