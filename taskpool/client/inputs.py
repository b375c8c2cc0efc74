"""Turn a user's task file or directory into TaskSpecs, or say precisely what is wrong with it.

Everything is checked before a batch starts: a bad line found after a thousand tasks have run is a
lost afternoon. Every problem found is reported at once, each with its file, line and reason, so one
edit fixes them all.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from taskpool.domain.tasks import Priority, TaskSpec

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv",)
TEXT_SUFFIXES = (".txt", ".md")
MAX_REPORTED = 50

_FIELDS: tuple[str, ...] = tuple(TaskSpec.model_fields)
_PRIORITIES = ", ".join(p.value for p in Priority)
_ISO_EXAMPLE = "2025-05-01T09:00:00Z"
# Task inputs are whole documents; csv's default cell limit (128 KiB) would reject ordinary ones.
_CSV_FIELD_LIMIT = 256 * 1024 * 1024
_ID_IN_BROKEN_LINE = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')
# Suggesting near matches compares against every id; past this many it costs more than it helps.
_MAX_SUGGESTIONS = 20


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


def load_tasks(
    path: str | Path,
    *,
    default_kind: str | None = None,
    known_kinds: Collection[str] | None = None,
    existing_ids: Collection[str] = (),
    check_dependencies: bool = True,
) -> list[TaskSpec]:
    """Read the tasks in `path`, in file order, or raise InputError listing every problem.

    `path` is one of:

    - a JSON Lines file (`.jsonl`, `.ndjson`, or `.json` with one object per line): one task per
      line, `{"id", "input", "label"?, "kind"?, "priority"?, "depends_on"?, "scheduled_for"?,
      "metadata"?}`; blank lines are skipped;
    - a CSV file (`.csv`) whose header names the same fields. `input` is text, or a JSON object
      when the cell holds one; `depends_on` is ids separated by commas or semicolons, or a JSON
      list; `metadata` is a JSON object; an empty cell means "not given";
    - a directory: one task per `*.txt` / `*.md` file, sorted by file name, with id = the file's
      stem and input = its text. Other files, hidden files and subdirectories are ignored.

    Files are UTF-8 (a byte-order mark is allowed). An optional field that is null or an empty
    string counts as not given. `priority` is case-insensitive. `scheduled_for` is an ISO 8601
    date-time or date; one without a timezone is taken as UTC.

    `default_kind` is the kind of tasks that do not set one. `known_kinds`, when given, is the set
    of kinds a task may name. `existing_ids` are the ids already in the batch when adding tasks to
    it: new ids must differ from them, and new tasks may depend on them. Without
    `check_dependencies` (a file that gives tasks of a batch new inputs), `depends_on` may name
    tasks the file does not hold.
    """
    source = Path(path)
    problems: list[InputProblem] = []
    drafts, complete = _read_source(source, default_kind, problems)
    _check_batch(
        source,
        drafts,
        complete,
        default_kind,
        known_kinds,
        existing_ids,
        problems,
        check_dependencies=check_dependencies,
    )
    if problems:
        # Whole-file problems (no line) first, then by line; sort is stable within a line.
        problems.sort(key=lambda p: (p.path, p.line or 0))
        raise InputError(problems)
    return [draft.spec for draft in drafts if draft.spec is not None]


# --- Reading one record -------------------------------------------------------------------------


@dataclass
class _Draft:
    """A record as read: its place, its spec if the record is valid, and its id if it has one."""

    path: str
    line: int | None
    id: str | None
    spec: TaskSpec | None
    kind_is_default: bool

    def problem(self, message: str) -> InputProblem:
        return InputProblem(self.path, self.line, message)


def _to_draft(
    record: Mapping[str, Any],
    path: str,
    line: int | None,
    default_kind: str | None,
    problems: list[InputProblem],
    cell_errors: Sequence[str] = (),
) -> _Draft:
    """Validate one record; its problems are added to `problems` and leave `spec` unset."""
    errors = list(cell_errors)
    data: dict[str, Any] = {}
    for key, value in record.items():
        if key not in _FIELDS:
            errors.append(
                f"unknown field {key!r}{_suggest(key, _FIELDS)}; fields are {_field_list()}"
            )
        elif value is not None and not (value == "" and key not in ("id", "input")):
            data[key] = value
    # Fields whose problem is already explained; pydantic's "field required" would only repeat it.
    explained: set[str] = set()

    task_id = data.get("id")
    if task_id is None:
        errors.append("missing id")
        explained.add("id")
    elif isinstance(task_id, str) and not task_id.strip():
        errors.append("empty id")
        explained.add("id")

    task_input = data.get("input")
    if task_input is None:
        errors.append("missing input")
        explained.add("input")
    elif isinstance(task_input, str) and not task_input.strip():
        errors.append("empty input")
        explained.add("input")
    elif not isinstance(task_input, str | dict):
        errors.append(f"input: must be text or a JSON object, not {_json_type(task_input)}")
        explained.add("input")

    kind_is_default = "kind" not in data and default_kind is not None
    if kind_is_default:
        data["kind"] = default_kind

    if isinstance(data.get("priority"), str):
        data["priority"] = data["priority"].strip().lower()

    depends_on = data.get("depends_on")
    if isinstance(depends_on, str):
        data["depends_on"] = _split_ids(depends_on)
    elif isinstance(depends_on, list):
        data["depends_on"] = [
            d.strip() if isinstance(d, str) else d
            for d in depends_on
            if not (isinstance(d, str) and not d.strip())
        ]

    if "scheduled_for" in data:
        when = _parse_when(data["scheduled_for"])
        if when is None:
            errors.append(
                f"scheduled_for: {data['scheduled_for']!r} is not an ISO 8601 date-time "
                f"(e.g. {_ISO_EXAMPLE})"
            )
            explained.add("scheduled_for")
        else:
            data["scheduled_for"] = when

    if "metadata" in data and not isinstance(data["metadata"], dict):
        errors.append(f"metadata: must be a JSON object, not {_json_type(data['metadata'])}")
        explained.add("metadata")

    spec: TaskSpec | None = None
    try:
        spec = TaskSpec.model_validate(data)
    except ValidationError as exc:
        errors += [_describe(e) for e in exc.errors() if str(e["loc"][0]) not in explained]

    for message in errors:
        problems.append(InputProblem(path, line, message))
    usable_id = task_id if isinstance(task_id, str) and task_id.strip() else None
    if spec is not None and not errors:
        # Listing a dependency twice means nothing more than listing it once.
        spec.depends_on = list(dict.fromkeys(spec.depends_on))
    return _Draft(path, line, usable_id, None if errors else spec, kind_is_default)


def _split_ids(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,;]", text) if part.strip()]


def _parse_when(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _describe(error: ErrorDetails) -> str:
    loc = error["loc"]
    field = str(loc[0]) + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:]
    )
    if field == "priority":
        return f"priority: {error['input']!r} is not one of {_PRIORITIES}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{field}: {message[:1].lower()}{message[1:]}"


def _json_type(value: object) -> str:
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


def _field_list() -> str:
    return ", ".join(_FIELDS)


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- Reading a source ---------------------------------------------------------------------------


def _read_source(
    source: Path, default_kind: str | None, problems: list[InputProblem]
) -> tuple[list[_Draft], bool]:
    """The records read, and whether every record in the source could be read."""
    where = str(source)
    if source.is_dir():
        return _read_directory(source, default_kind, problems), True
    if not source.exists():
        problems.append(InputProblem(where, None, "no such file or directory"))
        return [], True
    if not source.is_file():
        problems.append(InputProblem(where, None, "not a regular file or directory"))
        return [], True
    suffix = source.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        problems.append(
            InputProblem(
                where,
                None,
                f"unsupported file type {suffix or '(no extension)'!r}: give a JSON Lines file "
                f"({', '.join(JSONL_SUFFIXES)}), a {', '.join(CSV_SUFFIXES)} file, "
                f"or a directory of {', '.join(TEXT_SUFFIXES)} files",
            )
        )
        return [], True
    text = _read_text(source, problems)
    if text is None:
        return [], True
    if suffix in CSV_SUFFIXES:
        return _read_csv(where, text, default_kind, problems)
    return _read_jsonl(where, text, default_kind, problems), True


def _read_text(file: Path, problems: list[InputProblem]) -> str | None:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        problems.append(InputProblem(str(file), None, f"cannot read: {exc.strerror or exc}"))
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        byte = raw[exc.start : exc.start + 1].hex()
        problems.append(
            InputProblem(str(file), line, f"not UTF-8 text (byte 0x{byte}); save it as UTF-8")
        )
        return None


def _read_directory(
    directory: Path, default_kind: str | None, problems: list[InputProblem]
) -> list[_Draft]:
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        problems.append(InputProblem(str(directory), None, f"cannot list: {exc.strerror or exc}"))
        return []
    files = sorted(
        (
            entry
            for entry in entries
            if entry.suffix.lower() in TEXT_SUFFIXES
            and not entry.name.startswith(".")
            and entry.is_file()
        ),
        key=lambda entry: entry.name,
    )
    if not files:
        problems.append(
            InputProblem(
                str(directory),
                None,
                f"no tasks in {directory}: it has no {' or '.join(TEXT_SUFFIXES)} files",
            )
        )
        return []
    drafts = []
    for file in files:
        text = _read_text(file, problems)
        if text is None:
            continue
        record = {"id": file.stem, "input": text}
        drafts.append(_to_draft(record, str(file), None, default_kind, problems))
    return drafts


def _read_jsonl(
    where: str, text: str, default_kind: str | None, problems: list[InputProblem]
) -> list[_Draft]:
    drafts: list[_Draft] = []
    syntax: list[InputProblem] = []
    records = 0
    # Not splitlines(): it also splits on U+2028 and friends, which JSON strings may hold raw.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        records += 1
        try:
            value = _DECODER.decode(line)
        except ValueError as exc:
            reason = (
                f"{exc.msg} at column {exc.colno}"
                if isinstance(exc, json.JSONDecodeError)
                else str(exc)
            )
            syntax.append(InputProblem(where, number, f"not valid JSON: {reason}"))
            # Other tasks may depend on this one; knowing its id spares false "no task" reports.
            drafts.append(_Draft(where, number, _guess_id(line), None, kind_is_default=False))
            continue
        if not isinstance(value, dict):
            syntax.append(
                InputProblem(
                    where, number, f"expected one task object per line, got {_json_type(value)}"
                )
            )
            continue
        drafts.append(_to_draft(value, where, number, default_kind, problems))
    if records == 0:
        problems.append(InputProblem(where, None, f"no tasks in {where}: the file is empty"))
    elif syntax and records > 1 and _is_one_json_document(text):
        # A pretty-printed document breaks on every line; one sentence explains all of them.
        problems.append(
            InputProblem(
                where,
                1,
                "the file is one JSON document spread over many lines; "
                "write one task object per line (JSON Lines)",
            )
        )
        return []
    problems.extend(syntax)
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


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


# NaN and Infinity are not JSON, and no later JSON encoder would write them back.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _is_one_json_document(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _read_csv(
    where: str, text: str, default_kind: str | None, problems: list[InputProblem]
) -> tuple[list[_Draft], bool]:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    # newline="" leaves line endings inside quoted cells to the csv module, as its docs require.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    columns: list[str] | None = None
    drafts: list[_Draft] = []
    rows = 0
    start = 1  # A quoted cell may span lines: report the line where its record starts.
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                if columns is None:
                    columns = _read_header(where, start, row, problems)
                    if columns is None:
                        return [], False
                else:
                    rows += 1
                    drafts.append(_csv_row(where, start, columns, row, default_kind, problems))
            start = reader.line_num + 1
    except csv.Error as exc:
        reason = (
            "a quoted cell starting here never ends (missing closing quote)"
            if "unexpected end of data" in str(exc)
            else f"bad CSV: {exc}; a quote inside a quoted cell is written as two quotes"
        )
        problems.append(InputProblem(where, start, reason))
        return drafts, False
    if columns is None:
        problems.append(InputProblem(where, None, f"no tasks in {where}: the file is empty"))
    elif rows == 0:
        problems.append(InputProblem(where, None, f"no tasks in {where}: it has only a header"))
    return drafts, True


def _read_header(
    where: str, line: int, row: list[str], problems: list[InputProblem]
) -> list[str] | None:
    """The header's column names, or None when the rows cannot be read against it."""
    columns = [cell.strip().lower() for cell in row]
    usable = True
    seen: set[str] = set()
    for name in columns:
        if name and name in seen:
            problems.append(InputProblem(where, line, f"column {name!r} appears twice"))
            usable = False
        seen.add(name)
        if name and name not in _FIELDS:
            # Reported once here; the rows just ignore the column.
            problems.append(
                InputProblem(
                    where,
                    line,
                    f"unknown column {name!r}{_suggest(name, _FIELDS)}; "
                    f"columns are {_field_list()}",
                )
            )
    for required in ("id", "input"):
        if required not in seen:
            hint = ""
            if len(row) == 1 and any(sep in row[0] for sep in ";\t"):
                hint = (
                    "; the header seems to use another separator, but cells are separated by commas"
                )
            problems.append(InputProblem(where, line, f"header has no {required!r} column{hint}"))
            usable = False
    return columns if usable else None


def _csv_row(
    where: str,
    line: int,
    columns: list[str],
    row: list[str],
    default_kind: str | None,
    problems: list[InputProblem],
) -> _Draft:
    if len(row) > len(columns):
        problems.append(
            InputProblem(
                where,
                line,
                f"{len(row)} cells but the header has {len(columns)} columns; "
                "put text that contains commas in double quotes",
            )
        )
        # The id usually comes before the stray comma; knowing it spares false "no task" reports.
        task_id = row[columns.index("id")].strip()
        return _Draft(where, line, task_id or None, None, kind_is_default=False)
    record: dict[str, Any] = {}
    errors: list[str] = []
    # A short row leaves its last cells out: the same as empty cells.
    for name, cell in zip(columns, row, strict=False):
        if name not in _FIELDS or not cell.strip():
            continue
        if name == "input":
            record[name] = _object_or_text(cell)
        elif name == "depends_on" and cell.strip().startswith("["):
            ids = _json_or_none(cell)
            if isinstance(ids, list):
                record[name] = ids
            else:
                errors.append('depends_on: not a valid JSON list of ids (e.g. ["a", "b"])')
        elif name == "metadata":
            metadata = _json_or_none(cell)
            if isinstance(metadata, dict):
                record[name] = metadata
            else:
                errors.append('metadata: must be a JSON object (e.g. {"team": "search"})')
        else:
            record[name] = cell.strip()
    return _to_draft(record, where, line, default_kind, problems, errors)


def _object_or_text(cell: str) -> str | dict[str, Any]:
    if cell.strip().startswith("{"):
        value = _json_or_none(cell)
        if isinstance(value, dict):
            return value
    return cell


def _json_or_none(cell: str) -> Any:
    try:
        return _DECODER.decode(cell)
    except ValueError:
        return None


# --- Checks across tasks ------------------------------------------------------------------------


def _check_batch(
    source: Path,
    drafts: Sequence[_Draft],
    complete: bool,
    default_kind: str | None,
    known_kinds: Collection[str] | None,
    existing_ids: Collection[str],
    problems: list[InputProblem],
    *,
    check_dependencies: bool,
) -> None:
    if known_kinds is not None:
        _check_kinds(source, drafts, default_kind, known_kinds, problems)
    existing = set(existing_ids)
    first: dict[str, _Draft] = {}
    for draft in drafts:
        if draft.id is None:
            continue
        if draft.id in existing:
            problems.append(draft.problem(f"id {draft.id!r} is already in the batch"))
        elif draft.id in first:
            earlier = first[draft.id]
            place = f"on line {earlier.line}" if earlier.line is not None else f"in {earlier.path}"
            problems.append(draft.problem(f"duplicate id {draft.id!r} (first used {place})"))
        else:
            first[draft.id] = draft
    if check_dependencies:
        _check_dependencies(first, existing, complete, problems)


def _check_kinds(
    source: Path,
    drafts: Sequence[_Draft],
    default_kind: str | None,
    known_kinds: Collection[str],
    problems: list[InputProblem],
) -> None:
    known = ", ".join(sorted(known_kinds))
    if default_kind is not None and default_kind not in known_kinds:
        problems.append(
            InputProblem(
                str(source),
                None,
                f"unknown default kind {default_kind!r}{_suggest(default_kind, known_kinds)}; "
                f"known kinds: {known}",
            )
        )
    for draft in drafts:
        # Tasks given the default kind are covered by the one problem above.
        if draft.spec is None or draft.kind_is_default or draft.spec.kind in known_kinds:
            continue
        kind = draft.spec.kind
        problems.append(
            draft.problem(
                f"unknown kind {kind!r}{_suggest(kind, known_kinds)}; known kinds: {known}"
            )
        )


def _check_dependencies(
    tasks: Mapping[str, _Draft], existing: set[str], complete: bool, problems: list[InputProblem]
) -> None:
    """Every dependency must name a task, never the task itself, and never close a cycle.

    When part of the source could not be read, a dependency may name a task in that part, so
    unknown dependencies are left for the next attempt rather than reported falsely.
    """
    elsewhere = "in this file or the batch" if existing else "in this file"
    suggestions = 0
    graph: dict[str, list[str]] = {}
    for task_id, draft in tasks.items():
        if draft.spec is None:
            continue
        graph[task_id] = []
        for dep in draft.spec.depends_on:
            if dep == task_id:
                problems.append(draft.problem(f"task {task_id!r} depends on itself"))
            elif dep in tasks:
                # A cycle through an invalid task shows up once that task is fixed.
                if tasks[dep].spec is not None:
                    graph[task_id].append(dep)
            elif dep not in existing and complete:
                hint = ""
                if suggestions < _MAX_SUGGESTIONS:
                    suggestions += 1
                    hint = _suggest(dep, tasks)
                problems.append(draft.problem(f"depends_on: no task {dep!r} {elsewhere}{hint}"))
    for cycle in _find_cycles(graph):
        problems.append(tasks[cycle[0]].problem("dependency cycle: " + " -> ".join(cycle)))


def _find_cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, as [a, b, ..., a].

    Each cycle starts at the component's earliest task in `graph`'s order. Iterative (Tarjan),
    because a long chain of dependencies would exhaust Python's recursion limit.
    """
    order = {node: position for position, node in enumerate(graph)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in graph:
        if root in index:
            continue
        visit(root)
        work = [(root, iter(graph[root]))]
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    visit(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: set[str] = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        start = min(component, key=order.__getitem__)
                        cycles.append(_shortest_cycle(graph, component, start))
    cycles.sort(key=lambda cycle: order[cycle[0]])
    return cycles


def _shortest_cycle(
    graph: Mapping[str, Sequence[str]], component: set[str], start: str
) -> list[str]:
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in graph[node]:
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt in component and nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{start!r} is in a strongly connected component but on no cycle")
