"""A record as read: its place, its id, and its TaskSpec if the row model accepts it; otherwise
the row model's errors, worded as the record's problems.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from taskpool.client.inputs.problems import Problems
from taskpool.client.inputs.row import CELL_ERROR, ROW_ERROR, TaskRow
from taskpool.client.inputs.wording import FIELD_LIST, FIELDS, suggest
from taskpool.domain.tasks import Priority, TaskSpec

_PRIORITIES = ", ".join(p.value for p in Priority)


@dataclass(frozen=True)
class Draft:
    """`id` is known even for an invalid record when it names one; `spec` only for a valid one."""

    path: str
    line: int | None
    id: str | None
    spec: TaskSpec | None = None
    kind_is_default: bool = False


class Reading(NamedTuple):
    """The records read from a source, and whether every record in it could be read."""

    drafts: list[Draft]
    complete: bool = True


def read_row(
    row_type: type[TaskRow],
    raw: Mapping[str, object],
    path: str,
    line: int | None,
    default_kind: str | None,
    problems: Problems,
) -> Draft:
    """Validate one raw row with `row_type`; an invalid row reports its problems and has no spec."""
    try:
        row = row_type.model_validate(raw)
    except ValidationError as exc:
        positions = {key: position for position, key in enumerate(raw)}
        for error in sorted(exc.errors(), key=lambda e: _listing_order(e, positions)):
            problems.add(path, line, _describe(error))
        return Draft(path, line, row_type.given_id(raw))
    kind_is_default = default_kind is not None and "kind" not in row.model_fields_set
    return Draft(path, line, row.id, row.spec(default_kind), kind_is_default)


def _listing_order(error: ErrorDetails, positions: Mapping[str, int]) -> tuple[int, int]:
    """What is wrong with the row's shape first (bad cells, unknown fields) in the row's order;
    then values missing or unreadable; then values of the wrong type. Pydantic lists errors in
    field order, and the sort is stable.
    """
    kind = error["type"]
    if kind in (CELL_ERROR, "extra_forbidden"):
        return 0, positions.get(str(error["loc"][0]), 0)
    if kind in (ROW_ERROR, "missing"):
        return 1, 0
    return 2, 0


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind in (ROW_ERROR, CELL_ERROR):
        return str(error.get("ctx", {})["reason"])
    field = _field_path(error["loc"])
    if kind == "missing":
        return f"missing {field}"
    if kind == "extra_forbidden":
        return f"unknown field {field!r}{suggest(field, FIELDS)}; fields are {FIELD_LIST}"
    if field == "priority":
        return f"priority: {error['input']!r} is not one of {_PRIORITIES}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{field}: {message[:1].lower()}{message[1:]}"


def _field_path(loc: Sequence[int | str]) -> str:
    """`depends_on[1]` for the second id of depends_on."""
    return str(loc[0]) + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:]
    )
