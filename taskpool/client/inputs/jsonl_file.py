"""The JSON Lines reader: one task object per line; blank lines are skipped."""

from __future__ import annotations

import json
import re

from taskpool.client.inputs.draft import Draft, read_row
from taskpool.client.inputs.json_text import parse_json
from taskpool.client.inputs.problems import Problems
from taskpool.client.inputs.row import TaskRow
from taskpool.client.inputs.wording import json_type

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")

_ID_IN_BROKEN_LINE = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')


def read_jsonl(where: str, text: str, default_kind: str | None, problems: Problems) -> list[Draft]:
    drafts: list[Draft] = []
    # Held back: one explanation replaces them when the file is a single pretty-printed document.
    syntax: list[tuple[int, str]] = []
    records = 0
    # Not splitlines(): it also splits on U+2028 and friends, which JSON strings may hold raw.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        records += 1
        try:
            value = parse_json(line)
        except ValueError as exc:
            reason = (
                f"{exc.msg} at column {exc.colno}"
                if isinstance(exc, json.JSONDecodeError)
                else str(exc)
            )
            syntax.append((number, f"not valid JSON: {reason}"))
            # Other tasks may depend on this one; knowing its id spares false "no task" reports.
            drafts.append(Draft(where, number, _guess_id(line)))
            continue
        if not isinstance(value, dict):
            message = f"expected one task object per line, got {json_type(value)}"
            syntax.append((number, message))
            continue
        drafts.append(read_row(TaskRow, value, where, number, default_kind, problems))
    if records == 0:
        problems.add(where, None, f"no tasks in {where}: the file is empty")
    elif syntax and records > 1 and _is_one_json_document(text):
        # A pretty-printed document breaks on every line; one sentence explains all of them.
        problems.add(
            where,
            1,
            "the file is one JSON document spread over many lines; "
            "write one task object per line (JSON Lines)",
        )
        return []
    for number, message in syntax:
        problems.add(where, number, message)
    return drafts


def _guess_id(line: str) -> str | None:
    match = _ID_IN_BROKEN_LINE.search(line)
    if match is None:
        return None
    try:
        task_id = json.loads(f'"{match[1]}"')
    except ValueError:
        return None
    return task_id if isinstance(task_id, str) and task_id.strip() else None


def _is_one_json_document(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
