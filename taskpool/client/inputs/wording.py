"""How problems name the fields, values and near misses they are about."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from taskpool.domain.tasks import TaskSpec

FIELDS: tuple[str, ...] = tuple(TaskSpec.model_fields)
FIELD_LIST = ", ".join(FIELDS)


def suggest(word: str, candidates: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest candidate, or nothing when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def json_type(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    return "a number"
