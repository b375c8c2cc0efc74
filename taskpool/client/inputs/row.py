"""The row model: one task as a file writes it, coerced into a TaskSpec.

Readers hand it raw rows: a JSON object, or a text file's name and text (TaskRow), or a CSV
record's cells by column name (CellRow). Validating a row either gives its TaskSpec or fails with
one error per unusable field, every field checked; draft.py words those errors as problems.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError

from taskpool.client.inputs.json_text import parse_json_or_none
from taskpool.client.inputs.wording import FIELDS, json_type
from taskpool.domain.tasks import TaskSpec

# Error types whose message is the whole problem, ready to report.
ROW_ERROR = "task_row"
CELL_ERROR = "task_cell"

_REQUIRED = ("id", "input")
_ISO_EXAMPLE = "2025-05-01T09:00:00Z"


def _error(kind: str, reason: str) -> PydanticCustomError:
    # The reason goes in the context: a template would read braces in it as placeholders.
    return PydanticCustomError(kind, "{reason}", {"reason": reason})


class TaskRow(TaskSpec):
    """A task as a JSON object gives it.

    Null, and an empty string in an optional field, mean "not given". `priority` is
    case-insensitive; `depends_on` is a list of ids or one string of ids separated by commas or
    semicolons, each listed once; `scheduled_for` is an ISO 8601 date-time or date, in UTC when it
    names no timezone; `input` is text or an object, and `metadata` an object.
    """

    @classmethod
    def given(cls, raw: Mapping[str, object]) -> dict[str, object]:
        """The fields `raw` gives. Unknown fields stay, for validation to report."""
        return {
            key: value
            for key, value in raw.items()
            if key not in FIELDS
            or (value is not None and not (value == "" and key not in _REQUIRED))
        }

    @classmethod
    def given_id(cls, raw: Mapping[str, object]) -> str | None:
        """The row's id when it has one, valid or not: checks across tasks need it either way."""
        task_id = cls.given(raw).get("id")
        return task_id if isinstance(task_id, str) and task_id.strip() else None

    def spec(self, default_kind: str | None) -> TaskSpec:
        """The task this row defines; when it names no kind, `default_kind` if there is one."""
        values = vars(self).copy()
        given = set(self.model_fields_set)
        if default_kind is not None and "kind" not in given:
            values["kind"] = default_kind
            given.add("kind")
        # The row is a TaskSpec already validated: constructing skips validating it twice. The
        # fields set stays those the file gave, which the CLI's default priority relies on.
        return TaskSpec.model_construct(_fields_set=given, **values)

    @model_validator(mode="before")
    @classmethod
    def _only_given(cls, data: Any) -> Any:
        return cls.given(data) if isinstance(data, Mapping) else data

    @field_validator("id", mode="before")
    @classmethod
    def _id_not_blank(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise _error(ROW_ERROR, "empty id")
        return value

    @field_validator("input", mode="before")
    @classmethod
    def _input_text_or_object(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise _error(ROW_ERROR, "empty input")
        if not isinstance(value, str | dict):
            raise _error(ROW_ERROR, f"input: must be text or a JSON object, not {json_type(value)}")
        return value

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_name(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("depends_on", mode="before")
    @classmethod
    def _ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in re.split(r"[,;]", value) if part.strip()]
        if isinstance(value, list):
            return [
                item.strip() if isinstance(item, str) else item
                for item in value
                if not (isinstance(item, str) and not item.strip())
            ]
        return value

    @field_validator("depends_on")
    @classmethod
    def _each_once(cls, value: list[str]) -> list[str]:
        # Listing a dependency twice means nothing more than listing it once.
        return list(dict.fromkeys(value))

    @field_validator("scheduled_for", mode="before")
    @classmethod
    def _iso_8601(cls, value: object) -> datetime:
        when = _parse_when(value)
        if when is None:
            raise _error(
                ROW_ERROR,
                f"scheduled_for: {value!r} is not an ISO 8601 date-time (e.g. {_ISO_EXAMPLE})",
            )
        return when

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_object(cls, value: object) -> object:
        if not isinstance(value, dict):
            raise _error(ROW_ERROR, f"metadata: must be a JSON object, not {json_type(value)}")
        return value


class CellRow(TaskRow):
    """A task as a CSV record gives it: text cells by column name, read as TaskRow reads JSON.

    An empty cell means "not given", cells are stripped except `input`, and columns that name no
    field are left out (the header reports them once). `input` is a JSON object when the cell
    holds one, else text; `depends_on` may be a JSON list; `metadata` is a JSON object.

    Pydantic runs before-validators last defined first, so these (defined after TaskRow's) turn
    cells into JSON values and TaskRow's coercions then apply to the result.
    """

    @classmethod
    def given(cls, raw: Mapping[str, object]) -> dict[str, object]:
        return {
            name: cell if name == "input" else cell.strip()
            for name, cell in raw.items()
            if name in FIELDS and isinstance(cell, str) and cell.strip()
        }

    @field_validator("input", mode="before")
    @classmethod
    def _object_or_text(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().startswith("{"):
            parsed = parse_json_or_none(value)
            if isinstance(parsed, dict):
                return parsed
        return value

    @field_validator("depends_on", mode="before")
    @classmethod
    def _json_list(cls, value: object) -> object:
        if not (isinstance(value, str) and value.startswith("[")):
            return value
        ids = parse_json_or_none(value)
        if not isinstance(ids, list):
            raise _error(CELL_ERROR, 'depends_on: not a valid JSON list of ids (e.g. ["a", "b"])')
        return ids

    @field_validator("metadata", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        metadata = parse_json_or_none(value) if isinstance(value, str) else value
        if not isinstance(metadata, dict):
            raise _error(CELL_ERROR, 'metadata: must be a JSON object (e.g. {"team": "search"})')
        return metadata


def _parse_when(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
