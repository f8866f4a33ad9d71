"""ConfigError: every config problem names its file, line and field.

A loader collects all problems of a document set before failing, so an operator
sees every mistake in one `edge-router validate` run.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class ConfigError(Exception):
    """One or more problems; str() gives one `FILE:LINE: field: message` per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class Problems:
    """Accumulator passed through the loaders."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, file: str, line: int, field: str, message: str) -> None:
        self.items.append(Problem(file, line, field, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)
