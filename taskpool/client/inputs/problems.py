"""What is wrong with a task source: every problem with its file, line and reason, collected in one
place so that one report lists them all and one edit fixes them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_REPORTED = 50


@dataclass(frozen=True)
class InputProblem:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


class InputError(Exception):
    """The input cannot be used; `problems` lists every reason found, in file order."""

    def __init__(self, problems: Sequence[InputProblem]) -> None:
        self.problems = list(problems)
        super().__init__(_render(self.problems))


def _render(problems: Sequence[InputProblem]) -> str:
    count = len(problems)
    lines = [f"cannot load tasks: {count} problem{'' if count == 1 else 's'}"]
    lines += [f"  {problem}" for problem in problems[:MAX_REPORTED]]
    if count > MAX_REPORTED:
        lines.append(f"  and {count - MAX_REPORTED} more")
    return "\n".join(lines)


class Problems:
    """The problems found while loading one source. Readers and checks report into it as they go;
    the loader raises them together at the end.
    """

    def __init__(self) -> None:
        self._found: list[InputProblem] = []

    def add(self, path: str, line: int | None, message: str) -> None:
        """`line` is None for a problem with a whole file or directory."""
        self._found.append(InputProblem(path, line, message))

    def in_file_order(self) -> list[InputProblem]:
        """Whole-file problems (no line) first, then by line; in the order found within a line."""
        return sorted(self._found, key=lambda problem: (problem.path, problem.line or 0))

    def raise_if_any(self) -> None:
        """Raise InputError listing every problem in file order, if any was found."""
        if self._found:
            raise InputError(self.in_file_order())
