"""The input loader reads real files and reports every problem with its file, line and reason."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from taskpool.client.inputs import MAX_REPORTED, InputError, InputProblem, load_tasks
from taskpool.client.inputs.problems import Problems
from taskpool.client.inputs.row import CellRow, TaskRow
from taskpool.client.inputs.wording import FIELD_LIST
from taskpool.domain.tasks import Priority, TaskSpec


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def jsonl(*records: dict[str, Any] | str) -> str:
    """Lines of a JSONL file; strings are written as they are, to make broken lines."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def problems_of(path: Path, **options: Any) -> list[InputProblem]:
    with pytest.raises(InputError) as info:
        load_tasks(path, **options)
    return info.value.problems


def problems_in(directory: Path, name: str, text: str) -> tuple[Path, list[InputProblem]]:
    """Write one file and return it with the problems loading it reports."""
    path = write(directory, name, text)
    return path, problems_of(path)


def find(problems: list[InputProblem], path: Path, line: int | None, *phrases: str) -> None:
    """Assert that one problem is at `path`:`line` and mentions every phrase."""
    for problem in problems:
        if (
            problem.path == str(path)
            and problem.line == line
            and all(p in problem.message for p in phrases)
        ):
            return
    listed = "\n".join(map(str, problems))
    raise AssertionError(f"no problem at {path}:{line} mentioning {phrases}; got:\n{listed}")


# --- Happy paths -------------------------------------------------------------------------------


def test_jsonl_reads_every_field_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.jsonl",
        jsonl(
            {"id": "doc-1", "input": "first text"},
            {
                "id": "doc-2",
                "input": {"url": "https://example.com", "pages": [1, 2]},
                "label": "Second",
                "kind": "extract",
                "priority": "urgent",
                "depends_on": ["doc-1"],
                "scheduled_for": "2025-05-01T09:30:00+02:00",
                "metadata": {"team": "search", "weight": 2},
            },
        )
        + "\n   \n",
    )

    first, second = load_tasks(path)

    assert first.id == "doc-1"
    assert first.input == "first text"
    assert first.kind == "summarize"
    assert first.priority is Priority.NORMAL
    assert first.depends_on == []
    assert first.scheduled_for is None
    assert second.input == {"url": "https://example.com", "pages": [1, 2]}
    assert second.label == "Second"
    assert second.kind == "extract"
    assert second.priority is Priority.URGENT
    assert second.depends_on == ["doc-1"]
    assert second.scheduled_for == datetime(2025, 5, 1, 7, 30, tzinfo=UTC)
    assert second.scheduled_for.utcoffset() == timedelta(hours=2)
    assert second.metadata == {"team": "search", "weight": 2}


@pytest.mark.parametrize("suffix", [".ndjson", ".json", ".JSONL"])
def test_other_json_lines_suffixes(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path, f"tasks{suffix}", jsonl({"id": "a", "input": "x"}))

    assert [t.id for t in load_tasks(path)] == ["a"]


def test_scheduled_for_without_timezone_is_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.jsonl",
        jsonl(
            {"id": "a", "input": "x", "scheduled_for": "2025-05-01T09:00:00"},
            {"id": "b", "input": "x", "scheduled_for": "2025-05-02"},
            {"id": "c", "input": "x", "scheduled_for": "2025-05-03T10:00:00Z"},
        ),
    )

    a, b, c = load_tasks(path)

    assert a.scheduled_for == datetime(2025, 5, 1, 9, tzinfo=UTC)
    assert a.scheduled_for is not None
    assert a.scheduled_for.tzinfo is UTC
    assert b.scheduled_for == datetime(2025, 5, 2, tzinfo=UTC)
    assert c.scheduled_for == datetime(2025, 5, 3, 10, tzinfo=UTC)


def test_default_kind_applies_only_where_kind_is_not_given(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.jsonl",
        jsonl(
            {"id": "a", "input": "x"},
            {"id": "b", "input": "x", "kind": "translate"},
            {"id": "c", "input": "x", "kind": None},
        ),
    )

    tasks = load_tasks(path, default_kind="classify", known_kinds={"classify", "translate"})

    assert [t.kind for t in tasks] == ["classify", "translate", "classify"]


def test_null_and_empty_optional_fields_mean_not_given(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.jsonl",
        jsonl(
            {
                "id": "a",
                "input": "x",
                "label": "",
                "priority": None,
                "depends_on": None,
                "scheduled_for": "",
                "metadata": None,
            }
        ),
    )

    (task,) = load_tasks(path)

    assert task.label is None
    assert task.priority is Priority.NORMAL
    assert task.depends_on == []
    assert task.scheduled_for is None
    assert task.metadata == {}


def test_tasks_may_depend_on_ids_already_in_the_batch(tmp_path: Path) -> None:
    path = write(
        tmp_path, "more.jsonl", jsonl({"id": "new", "input": "x", "depends_on": "old-1; old-2"})
    )

    (task,) = load_tasks(path, existing_ids={"old-1", "old-2"})

    assert task.depends_on == ["old-1", "old-2"]


def test_csv_reads_every_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.csv",
        "id,input,label,kind,priority,depends_on,scheduled_for,metadata\n"
        "a,plain text,,,,,,\n"
        'b,"{""q"": ""why?"", ""n"": 3}",Bee,extract,High,a,'
        '2025-05-01T09:00:00,"{""team"": ""x""}"\n'
        'c,text,,,low,"a; b",,\n'
        'd,text,,,,"a,b,a",,\n'
        'e,text,,,,"[""a"", ""b""]",,\n',
    )

    a, b, c, d, e = load_tasks(path)

    assert (a.id, a.input, a.label, a.kind, a.priority) == (
        "a",
        "plain text",
        None,
        "summarize",
        Priority.NORMAL,
    )
    assert a.depends_on == []
    assert a.metadata == {}
    assert b.input == {"q": "why?", "n": 3}
    assert (b.label, b.kind, b.priority) == ("Bee", "extract", Priority.HIGH)
    assert b.depends_on == ["a"]
    assert b.scheduled_for == datetime(2025, 5, 1, 9, tzinfo=UTC)
    assert b.metadata == {"team": "x"}
    assert c.priority is Priority.LOW
    assert c.depends_on == ["a", "b"]
    assert d.depends_on == ["a", "b"]
    assert e.depends_on == ["a", "b"]


def test_csv_quoting_keeps_commas_quotes_and_newlines_in_input(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.csv",
        'id,input,priority\r\na,"one, two\r\nthree ""quoted""\nfour",high\r\n'
        'b,"{not json, just braces}",\r\n',
    )

    a, b = load_tasks(path)

    assert a.input == 'one, two\r\nthree "quoted"\nfour'
    assert a.priority is Priority.HIGH
    assert b.input == "{not json, just braces}"


def test_csv_from_excel_with_byte_order_mark_and_short_rows(tmp_path: Path) -> None:
    path = tmp_path / "tasks.csv"
    path.write_bytes("\ufeffID,Input,Kind\r\na,text\r\n,,\r\nb,more,translate\r\n".encode())

    a, b = load_tasks(path)

    assert (a.id, a.input, a.kind) == ("a", "text", "summarize")
    assert (b.id, b.kind) == ("b", "translate")


def test_directory_of_text_files(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    write(folder, "b-notes.md", "# Notes\n\nSome *markdown*.\n")
    write(folder, "a.report.txt", "A report.")
    write(folder, "image.png", "not text")
    write(folder, ".draft.txt", "editor leftovers")
    (folder / "nested").mkdir()
    write(folder / "nested", "c.txt", "ignored")

    tasks = load_tasks(folder, default_kind="translate")

    assert [(t.id, t.input, t.kind) for t in tasks] == [
        ("a.report", "A report.", "translate"),
        ("b-notes", "# Notes\n\nSome *markdown*.\n", "translate"),
    ]


def test_long_dependency_chain_loads(tmp_path: Path) -> None:
    count = 2000
    records: list[dict[str, Any]] = [{"id": "t0", "input": "x"}]
    records += [{"id": f"t{i}", "input": "x", "depends_on": [f"t{i - 1}"]} for i in range(1, count)]
    path = write(tmp_path, "chain.jsonl", jsonl(*records))

    tasks = load_tasks(path)

    assert len(tasks) == count
    assert tasks[-1].depends_on == [f"t{count - 2}"]


# --- Problems with the source --------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"

    problems = problems_of(path)

    find(problems, path, None, "no such file")


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_unreadable_file(tmp_path: Path) -> None:
    # Reading /proc/self/mem from offset 0 fails even for root, unlike a chmod 000 file.
    path = tmp_path / "tasks.jsonl"
    path.symlink_to("/proc/self/mem")

    problems = problems_of(path)

    find(problems, path, None, "cannot read")


def test_not_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    os.mkfifo(path)

    problems = problems_of(path)

    find(problems, path, None, "not a regular file")


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "tasks.csv"
    path.write_bytes(b"id,input\na,caf\xe9\n")

    problems = problems_of(path)

    find(problems, path, 2, "not UTF-8", "0xe9")


def test_unsupported_extension_lists_the_supported_ones(tmp_path: Path) -> None:
    path, problems = problems_in(tmp_path, "tasks.xlsx", "whatever")

    find(problems, path, None, "'.xlsx'", ".jsonl", ".csv", ".txt")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n\n"),
        ("empty.csv", ""),
        ("header-only.csv", "id,input\n\n"),
    ],
)
def test_file_without_tasks(tmp_path: Path, name: str, text: str) -> None:
    path, problems = problems_in(tmp_path, name, text)

    find(problems, path, None, f"no tasks in {path}")


def test_directory_without_text_files(tmp_path: Path) -> None:
    write(tmp_path, "data.csv.bak", "x")
    (tmp_path / "sub.txt").mkdir()

    problems = problems_of(tmp_path)

    find(problems, tmp_path, None, f"no tasks in {tmp_path}", ".txt", ".md")


def test_empty_text_file_in_directory(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "fine")
    empty = write(tmp_path, "b.md", " \n")

    problems = problems_of(tmp_path)

    assert len(problems) == 1
    find(problems, empty, None, "empty input")


# --- Problems with one line ----------------------------------------------------------------------


def test_line_that_is_not_json(tmp_path: Path) -> None:
    path = write(
        tmp_path, "tasks.jsonl", jsonl({"id": "a", "input": "x"}, '{"id": "b", "input": "y",}')
    )

    problems = problems_of(path)

    find(problems, path, 2, "not valid JSON", "column 26")


def test_nan_is_not_json(tmp_path: Path) -> None:
    path, problems = problems_in(tmp_path, "tasks.jsonl", '{"id": "a", "input": {"score": NaN}}\n')

    find(problems, path, 1, "not valid JSON", "NaN")


def test_line_that_is_not_an_object(tmp_path: Path) -> None:
    path, problems = problems_in(
        tmp_path, "tasks.jsonl", jsonl({"id": "a", "input": "x"}, '["b", "y"]')
    )

    find(problems, path, 2, "one task object per line", "array")


def test_pretty_printed_json_gets_one_explanation(tmp_path: Path) -> None:
    path, problems = problems_in(
        tmp_path, "tasks.json", json.dumps([{"id": "a", "input": "x"}], indent=2)
    )

    assert len(problems) == 1
    find(problems, path, 1, "one JSON document", "one task object per line")


@pytest.mark.parametrize(
    ("record", "phrase"),
    [
        ({"input": "x"}, "missing id"),
        ({"id": "", "input": "x"}, "empty id"),
        ({"id": "  ", "input": "x"}, "empty id"),
        ({"id": "a"}, "missing input"),
        ({"id": "a", "input": None}, "missing input"),
        ({"id": "a", "input": "  "}, "empty input"),
        ({"id": "a", "input": ["x"]}, "input: must be text or a JSON object"),
        ({"id": "a/b", "input": "x"}, "id: must not contain '/'"),
        ({"id": 7, "input": "x"}, "id: input should be a valid string"),
        ({"id": "a", "input": "x", "label": 3}, "label: input should be a valid string"),
        ({"id": "a", "input": "x", "depends_on": ["b", 2]}, "depends_on[1]:"),
        ({"id": "a", "input": "x", "metadata": [1]}, "metadata: must be a JSON object"),
        ({"id": "a", "input": "x", "prority": "high"}, "unknown field 'prority'"),
    ],
)
def test_invalid_record(tmp_path: Path, record: dict[str, Any], phrase: str) -> None:
    path, problems = problems_in(tmp_path, "tasks.jsonl", jsonl({"id": "ok", "input": "x"}, record))

    assert len(problems) == 1, problems
    find(problems, path, 2, phrase)


def test_unknown_field_suggests_the_right_one(tmp_path: Path) -> None:
    path, problems = problems_in(
        tmp_path, "tasks.jsonl", jsonl({"id": "a", "input": "x", "prority": "high"})
    )

    find(problems, path, 1, "did you mean 'priority'?")


def test_bad_priority_lists_the_allowed_values(tmp_path: Path) -> None:
    path, problems = problems_in(
        tmp_path, "tasks.jsonl", jsonl({"id": "a", "input": "x", "priority": "hgh"})
    )

    find(problems, path, 1, "priority", "'hgh'", "low, normal, high, urgent, critical")


@pytest.mark.parametrize("value", ["next tuesday", "2025-13-01", 1746090000])
def test_bad_scheduled_for_asks_for_iso_8601(tmp_path: Path, value: object) -> None:
    path, problems = problems_in(
        tmp_path, "tasks.jsonl", jsonl({"id": "a", "input": "x", "scheduled_for": value})
    )

    find(problems, path, 1, "scheduled_for", "ISO 8601", "2025-05-01T09:00:00Z")


def test_unknown_kind_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.jsonl",
        jsonl({"id": "a", "input": "x", "kind": "sumarize"}, {"id": "b", "input": "x"}),
    )

    problems = problems_of(path, known_kinds=["summarize", "translate"])

    assert len(problems) == 1
    find(problems, path, 1, "unknown kind 'sumarize'", "summarize, translate", "did you mean")


def test_unknown_default_kind_is_reported_once(tmp_path: Path) -> None:
    path = write(
        tmp_path, "tasks.jsonl", jsonl({"id": "a", "input": "x"}, {"id": "b", "input": "y"})
    )

    problems = problems_of(path, default_kind="poem", known_kinds=["summarize"])

    assert len(problems) == 1
    find(problems, path, None, "default kind 'poem'", "summarize")


# --- Problems across lines ---------------------------------------------------------------------


def test_duplicate_id_names_the_first_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.jsonl",
        jsonl({"id": "a", "input": "x"}, {"id": "b", "input": "x"}, {"id": "a", "input": "y"}),
    )

    problems = problems_of(path)

    assert len(problems) == 1
    find(problems, path, 3, "duplicate id 'a'", "line 1")


def test_duplicate_id_in_directory_names_the_first_file(tmp_path: Path) -> None:
    first = write(tmp_path, "a.md", "one")
    second = write(tmp_path, "a.txt", "two")

    problems = problems_of(tmp_path)

    find(problems, second, None, "duplicate id 'a'", str(first))


def test_id_already_in_the_batch(tmp_path: Path) -> None:
    path = write(
        tmp_path, "more.jsonl", jsonl({"id": "new", "input": "x"}, {"id": "old", "input": "x"})
    )

    problems = problems_of(path, existing_ids={"old"})

    assert len(problems) == 1
    find(problems, path, 2, "'old'", "already in the batch")


def test_dependency_on_unknown_id(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.jsonl",
        jsonl({"id": "doc-1", "input": "x"}, {"id": "b", "input": "x", "depends_on": ["doc-l"]}),
    )

    problems = problems_of(path)

    find(problems, path, 2, "no task 'doc-l' in this file", "did you mean 'doc-1'?")


def test_dependency_on_unknown_id_when_adding_to_a_batch(tmp_path: Path) -> None:
    path = write(tmp_path, "more.jsonl", jsonl({"id": "b", "input": "x", "depends_on": ["zzz"]}))

    problems = problems_of(path, existing_ids={"a"})

    find(problems, path, 1, "no task 'zzz' in this file or the batch")


def test_task_depending_on_itself(tmp_path: Path) -> None:
    path, problems = problems_in(
        tmp_path, "tasks.jsonl", jsonl({"id": "a", "input": "x", "depends_on": ["a"]})
    )

    assert len(problems) == 1
    find(problems, path, 1, "'a' depends on itself")


def test_dependency_cycles_are_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.jsonl",
        jsonl(
            {"id": "free", "input": "x"},
            {"id": "a", "input": "x", "depends_on": ["b", "free"]},
            {"id": "b", "input": "x", "depends_on": ["c"]},
            {"id": "c", "input": "x", "depends_on": ["a"]},
            {"id": "p", "input": "x", "depends_on": ["q"]},
            {"id": "q", "input": "x", "depends_on": ["p"]},
            {"id": "after", "input": "x", "depends_on": ["a"]},
        ),
    )

    problems = problems_of(path)

    assert len(problems) == 2, problems
    find(problems, path, 2, "dependency cycle: a -> b -> c -> a")
    find(problems, path, 5, "dependency cycle: p -> q -> p")


def test_long_dependency_cycle_is_found(tmp_path: Path) -> None:
    count = 1500
    records = [
        {"id": f"t{i}", "input": "x", "depends_on": [f"t{(i + 1) % count}"]} for i in range(count)
    ]
    path, problems = problems_in(tmp_path, "ring.jsonl", jsonl(*records))

    assert len(problems) == 1
    find(problems, path, 1, "dependency cycle: t0 -> t1 -> t2", f"t{count - 1} -> t0")


def test_dependency_on_a_broken_line_is_not_reported_as_unknown(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.jsonl",
        jsonl(
            '{"id": "a", "input": "unterminated}',
            {"id": "b", "input": "x", "depends_on": ["a"]},
            {"id": "c", "input": "x", "priority": "hgh"},
            {"id": "d", "input": "x", "depends_on": ["c"]},
        ),
    )

    problems = problems_of(path)

    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (1, "not valid JSON"),
        (3, "priority"),
    ]


# --- CSV problems --------------------------------------------------------------------------------


def test_csv_problems_carry_the_line_where_the_record_starts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.csv",
        'id,input,priority,metadata\na,"line one\nline two\nline three",asap,\n'
        'b,x,sometimes,\nc,x,,"[1]"\nd,x,,"{""ok"": true}"\n',
    )

    problems = problems_of(path)

    assert len(problems) == 3
    find(problems, path, 2, "priority", "'asap'")
    find(problems, path, 5, "priority", "'sometimes'", "low, normal")
    find(problems, path, 6, "metadata: must be a JSON object")


def test_csv_row_with_too_many_cells(tmp_path: Path) -> None:
    path, problems = problems_in(tmp_path, "tasks.csv", "id,input\na,one, two\nb,x\n")

    assert len(problems) == 1
    find(problems, path, 2, "3 cells", "2 columns", "double quotes")


def test_csv_unclosed_quote(tmp_path: Path) -> None:
    path, problems = problems_in(tmp_path, "tasks.csv", 'id,input\na,x\nb,"never closed\nc,y\n')

    find(problems, path, 3, "never ends", "quote")


def test_csv_cut_short_does_not_report_dependencies_on_unread_rows(tmp_path: Path) -> None:
    path, problems = problems_in(
        tmp_path, "tasks.csv", 'id,input,depends_on\na,x,c\nb,"never closed,\nc,y,\n'
    )

    assert len(problems) == 1
    find(problems, path, 3, "never ends")


def test_csv_stray_quote(tmp_path: Path) -> None:
    path, problems = problems_in(tmp_path, "tasks.csv", 'id,input\na,"quoted" then more\n')

    find(problems, path, 2, "bad CSV", "two quotes")


def test_csv_header_problems(tmp_path: Path) -> None:
    path, problems = problems_in(tmp_path, "tasks.csv", "id,text,labels\na,x,y\n")

    find(problems, path, 1, "no 'input' column")
    find(problems, path, 1, "unknown column 'text'")
    find(problems, path, 1, "unknown column 'labels'", "did you mean 'label'?")


def test_csv_with_semicolons_gets_a_hint(tmp_path: Path) -> None:
    path, problems = problems_in(tmp_path, "tasks.csv", "id;input\na;x\n")

    find(problems, path, 1, "no 'id' column", "separated by commas")


def test_csv_bad_json_in_depends_on(tmp_path: Path) -> None:
    path, problems = problems_in(tmp_path, "tasks.csv", 'id,input,depends_on\na,x,\nb,x,"[""a"""\n')

    find(problems, path, 3, "depends_on", "JSON list")


def test_csv_empty_id_and_input_cells(tmp_path: Path) -> None:
    path, problems = problems_in(tmp_path, "tasks.csv", "id,input,kind\n,text,\nb,,translate\n")

    find(problems, path, 2, "missing id")
    find(problems, path, 3, "missing input")


# --- Reporting -----------------------------------------------------------------------------------


def test_all_problems_are_reported_together_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.jsonl",
        jsonl(
            {"id": "a", "input": "x", "depends_on": ["ghost"]},
            "not json",
            {"input": "no id"},
            {"id": "d", "input": "x", "priority": "asap", "scheduled_for": "soon"},
            {"id": "a", "input": "again"},
            {"id": "f", "input": "x", "kind": "poem"},
        ),
    )

    with pytest.raises(InputError) as info:
        load_tasks(path, known_kinds={"summarize"})

    problems = info.value.problems
    assert [p.line for p in problems] == [1, 2, 3, 4, 4, 5, 6]
    find(problems, path, 1, "no task 'ghost'")
    find(problems, path, 2, "not valid JSON")
    find(problems, path, 3, "missing id")
    find(problems, path, 4, "priority")
    find(problems, path, 4, "scheduled_for")
    find(problems, path, 5, "duplicate id 'a'", "line 1")
    find(problems, path, 6, "unknown kind 'poem'")
    text = str(info.value)
    assert text.startswith("cannot load tasks: 7 problems\n")
    for line in (1, 2, 3, 4, 5, 6):
        assert f"{path}:{line}: " in text


def test_report_is_capped(tmp_path: Path) -> None:
    extra = 7
    path = write(tmp_path, "tasks.jsonl", "broken\n" * (MAX_REPORTED + extra))

    with pytest.raises(InputError) as info:
        load_tasks(path)

    assert len(info.value.problems) == MAX_REPORTED + extra
    text = str(info.value)
    assert f"{path}:{MAX_REPORTED}: not valid JSON" in text
    assert f"{path}:{MAX_REPORTED + 1}:" not in text
    assert text.endswith(f"\n  and {extra} more")


def test_a_row_reports_each_unusable_field_once_in_a_stable_order(tmp_path: Path) -> None:
    path, problems = problems_in(
        tmp_path,
        "tasks.jsonl",
        jsonl({"label": 3, "id": "a/b", "scheduled_for": "soon", "prority": "high", "x": None}),
    )

    assert [p.message for p in problems] == [
        "unknown field 'prority' (did you mean 'priority'?); fields are " + FIELD_LIST,
        "unknown field 'x'; fields are " + FIELD_LIST,
        "missing input",
        "scheduled_for: 'soon' is not an ISO 8601 date-time (e.g. 2025-05-01T09:00:00Z)",
        "id: must not contain '/', tabs, newlines or surrounding spaces",
        "label: input should be a valid string",
    ]
    assert {(p.path, p.line) for p in problems} == {(str(path), 1)}


def test_csv_cell_problems_come_in_column_order(tmp_path: Path) -> None:
    path, problems = problems_in(
        tmp_path, "tasks.csv", 'metadata,id,input,depends_on\n"[1]",a/b,,"[""x"""\n'
    )

    assert [p.message for p in problems] == [
        'metadata: must be a JSON object (e.g. {"team": "search"})',
        'depends_on: not a valid JSON list of ids (e.g. ["a", "b"])',
        "missing input",
        "id: must not contain '/', tabs, newlines or surrounding spaces",
    ]
    find(problems, path, 2, "metadata")


def test_loaded_tasks_are_plain_task_specs_that_know_what_the_file_gave(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.jsonl",
        jsonl({"id": "a", "input": "x", "priority": "HIGH"}, {"id": "b", "input": "y"}),
    )

    a, b = load_tasks(path, default_kind="translate")

    assert type(a) is TaskSpec
    assert a == TaskSpec(id="a", input="x", priority=Priority.HIGH, kind="translate")
    # The CLI gives its --priority only to tasks whose line set none.
    assert "priority" in a.model_fields_set
    assert "priority" not in b.model_fields_set


# --- The row model -------------------------------------------------------------------------------


def test_task_row_coerces_json_values() -> None:
    row = TaskRow.model_validate(
        {
            "id": "a",
            "input": {"q": 1},
            "label": "",
            "priority": " Urgent ",
            "depends_on": " b; c,b ,, ",
            "scheduled_for": " 2025-05-01 ",
            "metadata": None,
        }
    )

    spec = row.spec(default_kind="classify")

    assert spec.input == {"q": 1}
    assert spec.label is None
    assert spec.priority is Priority.URGENT
    assert spec.depends_on == ["b", "c"]
    assert spec.scheduled_for == datetime(2025, 5, 1, tzinfo=UTC)
    assert spec.metadata == {}
    assert spec.kind == "classify"
    assert TaskRow.model_validate({"id": "a", "input": "x", "kind": "k"}).spec("other").kind == "k"


def test_task_row_keeps_the_id_of_a_row_it_rejects() -> None:
    raw = {"id": " a ", "input": []}

    with pytest.raises(ValidationError) as info:
        TaskRow.model_validate(raw)

    assert {str(e["loc"][0]) for e in info.value.errors()} == {"id", "input"}
    assert TaskRow.given_id(raw) == " a "
    assert TaskRow.given_id({"id": "  "}) is None
    assert TaskRow.given_id({"id": 7}) is None


def test_cell_row_reads_text_cells() -> None:
    cells = {
        "id": " a ",
        "input": '  {"q": [1, 2]} ',
        "kind": "  ",
        "priority": "LOW",
        "depends_on": ' ["b", " c ", ""] ',
        "metadata": '{"team": "x"}',
        "colour": "red",
    }

    spec = CellRow.model_validate(cells).spec(default_kind=None)

    assert (spec.id, spec.input, spec.kind, spec.priority) == (
        "a",
        {"q": [1, 2]},
        "summarize",
        "low",
    )
    assert spec.depends_on == ["b", "c"]
    assert spec.metadata == {"team": "x"}
    assert spec.model_fields_set == {"id", "input", "priority", "depends_on", "metadata"}
    assert CellRow.model_validate({"id": "a", "input": " {x} "}).spec(None).input == " {x} "
    assert CellRow.given_id({"id": " a "}) == "a"


# --- The collector of problems -------------------------------------------------------------------


def test_problems_come_out_by_file_then_line_and_in_the_order_found_within_a_line() -> None:
    problems = Problems()
    problems.raise_if_any()  # nothing found: nothing raised

    problems.add("b.jsonl", 2, "second on line 2")
    problems.add("a.jsonl", 3, "a3")
    problems.add("b.jsonl", 1, "b1")
    problems.add("b.jsonl", None, "whole file")
    problems.add("b.jsonl", 2, "third on line 2")
    problems.add("a.jsonl", None, "whole a")

    expected = [
        InputProblem("a.jsonl", None, "whole a"),
        InputProblem("a.jsonl", 3, "a3"),
        InputProblem("b.jsonl", None, "whole file"),
        InputProblem("b.jsonl", 1, "b1"),
        InputProblem("b.jsonl", 2, "second on line 2"),
        InputProblem("b.jsonl", 2, "third on line 2"),
    ]
    assert problems.in_file_order() == expected
    with pytest.raises(InputError) as info:
        problems.raise_if_any()
    assert info.value.problems == expected
    assert str(info.value).splitlines() == [
        "cannot load tasks: 6 problems",
        "  a.jsonl: whole a",
        "  a.jsonl:3: a3",
        "  b.jsonl: whole file",
        "  b.jsonl:1: b1",
        "  b.jsonl:2: second on line 2",
        "  b.jsonl:2: third on line 2",
    ]


def test_one_problem_is_reported_in_the_singular() -> None:
    problems = Problems()
    problems.add("t.csv", 4, "bad")

    with pytest.raises(InputError, match=r"^cannot load tasks: 1 problem\n  t.csv:4: bad$"):
        problems.raise_if_any()
