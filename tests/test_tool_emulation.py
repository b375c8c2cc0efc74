"""Tool emulation: the schema the server enforces, the words the model reads, the parse back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskpool.domain.turns import ChatMessage, ToolCall, ToolSpec
from taskpool.infra.tool_emulation import (
    DEFAULT_MAX_CALLS,
    emulated_messages,
    emulation_instructions,
    parse_emulated_reply,
    response_format_for,
)
from tests.agent_tools import AGENT_TOOLS as TOOLS


def _schema() -> dict[str, Any]:
    response_format = response_format_for(TOOLS)
    assert response_format["type"] == "json_schema"
    schema: dict[str, Any] = response_format["json_schema"]["schema"]
    return schema


def _alternatives() -> dict[str, dict[str, Any]]:
    items = _schema()["properties"]["calls"]["items"]["anyOf"]
    return {alt["properties"]["name"]["const"]: alt for alt in items}


# --- response_format_for -------------------------------------------------------------------------


def test_schema_is_a_bounded_list_of_calls() -> None:
    schema = _schema()
    assert schema["required"] == ["calls"]
    assert schema["additionalProperties"] is False
    calls = schema["properties"]["calls"]
    assert (calls["minItems"], calls["maxItems"]) == (1, DEFAULT_MAX_CALLS)
    assert response_format_for(TOOLS)["json_schema"]["name"]


def test_schema_has_one_alternative_per_tool_with_name_before_arguments() -> None:
    alternatives = _alternatives()
    assert list(alternatives) == [tool.name for tool in TOOLS]
    for alternative in alternatives.values():
        # The grammar writes properties in this order: the model picks the tool first.
        assert list(alternative["properties"]) == ["name", "arguments"]
        assert alternative["required"] == ["name", "arguments"]
        assert alternative["additionalProperties"] is False


def test_schema_closes_argument_objects_without_touching_the_tools() -> None:
    alternatives = _alternatives()
    progress = alternatives["report_progress"]["properties"]["arguments"]
    assert progress["properties"] == TOOLS[1].parameters["properties"]
    assert progress["required"] == ["percent", "step"]
    assert progress["additionalProperties"] is False
    assert alternatives["start_task"]["properties"]["arguments"]["additionalProperties"] is False
    assert "additionalProperties" not in TOOLS[1].parameters


def test_schema_keeps_an_explicit_additional_properties_and_fills_in_empty_parameters() -> None:
    open_tool = ToolSpec(
        name="note",
        description="Anything.",
        parameters={"type": "object", "properties": {}, "additionalProperties": True},
    )
    bare_tool = ToolSpec(name="ping", description="No arguments.", parameters={})
    alternatives = response_format_for([open_tool, bare_tool])["json_schema"]["schema"]
    by_name = {
        alt["properties"]["name"]["const"]: alt["properties"]["arguments"]
        for alt in alternatives["properties"]["calls"]["items"]["anyOf"]
    }
    assert by_name["note"]["additionalProperties"] is True
    assert by_name["ping"] == {"type": "object", "properties": {}, "additionalProperties": False}


def test_schema_allows_more_calls_when_asked() -> None:
    schema = response_format_for(TOOLS, max_calls=3)["json_schema"]["schema"]
    assert schema["properties"]["calls"]["maxItems"] == 3


def test_schema_caps_strings_that_set_no_length_when_asked() -> None:
    capped = ToolSpec(
        name="note",
        description="Write notes.",
        parameters={
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "title": {"type": "string", "maxLength": 20},
                "body": {"anyOf": [{"type": "string"}, {"type": "object"}]},
                "tags": {"type": "array", "items": {"type": ["string", "null"]}},
                "count": {"type": "integer"},
            },
        },
    )
    schema = response_format_for([capped], max_string_length=300)["json_schema"]["schema"]
    arguments = schema["properties"]["calls"]["items"]["anyOf"][0]["properties"]["arguments"]
    properties = arguments["properties"]
    assert properties["text"] == {"type": "string", "maxLength": 300}
    assert properties["title"] == {"type": "string", "maxLength": 20}
    assert properties["body"]["anyOf"] == [{"type": "string", "maxLength": 300}, {"type": "object"}]
    assert properties["tags"]["items"] == {"type": ["string", "null"], "maxLength": 300}
    assert properties["count"] == {"type": "integer"}
    assert "maxLength" not in capped.parameters["properties"]["text"]
    uncapped = response_format_for([capped])["json_schema"]["schema"]
    assert "maxLength" not in json.dumps(uncapped).replace('"maxLength": 20', "")


def test_schema_rejects_no_tools_and_a_useless_call_cap() -> None:
    with pytest.raises(ValueError, match="at least one tool"):
        response_format_for([])
    with pytest.raises(ValueError, match="max_calls"):
        response_format_for(TOOLS, max_calls=0)
    with pytest.raises(ValueError, match="max_string_length"):
        response_format_for(TOOLS, max_string_length=0)


def test_schema_is_plain_json() -> None:
    assert json.loads(json.dumps(response_format_for(TOOLS))) == response_format_for(TOOLS)


# --- emulation_instructions ----------------------------------------------------------------------


def test_instructions_show_the_shape_and_each_tool() -> None:
    text = emulation_instructions(TOOLS)
    assert '{"calls": [{"name": "<tool>", "arguments": {...}}]}' in text
    assert "- start_task {}: Mark the task as started." in text
    assert '- report_progress {"percent": number, "step": string}: Report how far' in text
    assert '- complete_task {"result": string or object}: Finish' in text
    assert "Example" not in text


def test_instructions_mark_optional_arguments_and_enums() -> None:
    tool = ToolSpec(
        name="rate",
        description="Rate it.",
        parameters={
            "type": "object",
            "properties": {
                "grade": {"enum": ["good", "bad"]},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["grade"],
        },
    )
    assert '- rate {"grade": "good" or "bad", "tags"?: list of string}: Rate it.' in (
        emulation_instructions([tool])
    )


def _example(text: str) -> Any:
    line = next(line for line in text.splitlines() if line.startswith("Example: "))
    return json.loads(line.removeprefix("Example: "))


def test_instructions_example_shows_the_named_tools_with_placeholders() -> None:
    assert _example(emulation_instructions(TOOLS, example="report_progress")) == {
        "calls": [{"name": "report_progress", "arguments": {"percent": 0, "step": "..."}}]
    }
    assert _example(emulation_instructions(TOOLS, example=["start_task", "complete_task"])) == {
        "calls": [
            {"name": "start_task", "arguments": {}},
            {"name": "complete_task", "arguments": {"result": "..."}},
        ]
    }


def test_a_copied_example_parses_but_is_flagged() -> None:
    example = _example(emulation_instructions(TOOLS, example="complete_task"))
    [call] = parse_emulated_reply(json.dumps(example), TOOLS, "t")
    assert call.name == "complete_task"
    assert call.arguments == {"result": "..."}
    assert call.arguments_error == (
        "argument 'result' is '...', copied from the example; write the real value instead"
    )


def test_instructions_reject_an_unknown_example_tool() -> None:
    with pytest.raises(ValueError, match="'nope' is not one of start_task"):
        emulation_instructions(TOOLS, example="nope")


# --- parse_emulated_reply ------------------------------------------------------------------------


def test_parse_calls_in_order_with_stable_ids() -> None:
    reply = json.dumps(
        {
            "calls": [
                {"name": "start_task", "arguments": {}},
                {"name": "report_progress", "arguments": {"percent": 50, "step": "reading"}},
                {"name": "complete_task", "arguments": {"result": "A short summary."}},
            ]
        }
    )
    assert parse_emulated_reply(reply, TOOLS, "b1/t1-3") == [
        ToolCall(id="b1/t1-3-0", name="start_task"),
        ToolCall(
            id="b1/t1-3-1", name="report_progress", arguments={"percent": 50, "step": "reading"}
        ),
        ToolCall(id="b1/t1-3-2", name="complete_task", arguments={"result": "A short summary."}),
    ]


def test_parse_pretty_printed_reply_as_llama_cpp_writes_it() -> None:
    reply = (
        '{\n  "calls": [\n    {\n      "name": "complete_task",\n      "arguments": {\n'
        '   \t\t"result": "Done."\n      }\n    }\n  ]\n}'
    )
    assert parse_emulated_reply(reply, TOOLS, "x") == [
        ToolCall(id="x-0", name="complete_task", arguments={"result": "Done."})
    ]


@pytest.mark.parametrize(
    "reply",
    [
        '{"name": "fail_task", "arguments": {"reason": "empty input"}}',
        '[{"name": "fail_task", "arguments": {"reason": "empty input"}}]',
        '```json\n{"calls": [{"name": "fail_task", "arguments": {"reason": "empty input"}}]}\n```',
        'Sure! {"name": "fail_task", "arguments": {"reason": "empty input"}} Hope it helps.',
        '{"name": "fail_task", "arguments": "{\\"reason\\": \\"empty input\\"}"}',
        '{"tool": "fail_task", "args": {"reason": "empty input"}}',
        '{"tool_calls": [{"type": "function", "function": {"name": "fail_task", '
        '"arguments": "{\\"reason\\": \\"empty input\\"}"}}]}',
    ],
    ids=["bare-call", "bare-list", "fenced", "prose", "string-args", "aliases", "openai-shape"],
)
def test_parse_tolerates_what_unconstrained_servers_let_through(reply: str) -> None:
    assert parse_emulated_reply(reply, TOOLS, "p") == [
        ToolCall(id="p-0", name="fail_task", arguments={"reason": "empty input"})
    ]


def test_parse_call_without_arguments_gets_empty_arguments() -> None:
    assert parse_emulated_reply('{"name": "start_task"}', TOOLS, "s") == [
        ToolCall(id="s-0", name="start_task")
    ]


def test_parse_unknown_tool_keeps_its_name_and_explains() -> None:
    reply = json.dumps(
        {
            "calls": [
                {"name": "delete_everything", "arguments": {"all": True}},
                {"name": "start_task", "arguments": {}},
            ]
        }
    )
    unknown, known = parse_emulated_reply(reply, TOOLS, "u")
    assert unknown.name == "delete_everything"
    assert unknown.arguments == {"all": True}
    assert unknown.arguments_error == (
        "unknown tool 'delete_everything'; the tools are start_task, report_progress, "
        "complete_task, fail_task"
    )
    assert known == ToolCall(id="u-1", name="start_task")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ('{"calls": [{"name": "complete_task", "arguments": {"result": "cut off', "not valid JSON"),
        ('{"calls": [{"name": "start_task", "arguments": {}}, {"name": "fail', "not valid JSON"),
        ("I have summarized the text.", "not valid JSON"),
        ('{"summary": "no call here"}', "JSON but not a list of tool calls"),
        ('"just a string"', "JSON but not a list of tool calls"),
        ('{"calls": []}', "list of tool calls is empty"),
    ],
    ids=["truncated", "truncated-after-a-call", "prose-only", "wrong-object", "scalar", "no-calls"],
)
def test_parse_unusable_reply_becomes_one_nameless_call_with_the_reason(
    reply: str, reason: str
) -> None:
    [call] = parse_emulated_reply(reply, TOOLS, "e")
    assert call.id == "e-0"
    assert call.name == ""
    assert call.arguments == {}
    assert call.arguments_error is not None
    assert reason in call.arguments_error
    assert '{"calls": [{"name": "<tool>"' in call.arguments_error


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ('"complete_task"', "must be an object"),
        ('{"arguments": {"result": "x"}}', "has no tool name"),
        ('{"name": "complete_task", "arguments": "{not json"}', "arguments are not valid JSON"),
        ('{"name": "complete_task", "arguments": [1, 2]}', "must be a JSON object"),
    ],
)
def test_parse_bad_call_in_a_list_is_reported_in_place(item: str, reason: str) -> None:
    reply = f'{{"calls": [{{"name": "start_task", "arguments": {{}}}}, {item}]}}'
    first, second = parse_emulated_reply(reply, TOOLS, "l")
    assert first == ToolCall(id="l-0", name="start_task")
    assert second.id == "l-1"
    assert second.arguments_error is not None
    assert reason in second.arguments_error


@pytest.mark.parametrize("reply", ["", "  \n ", "```\n```"])
def test_parse_empty_reply_is_no_calls(reply: str) -> None:
    assert parse_emulated_reply(reply, TOOLS, "z") == []


def test_parse_shortens_long_garbage_in_the_reason() -> None:
    [call] = parse_emulated_reply("x" * 5000, TOOLS, "g")
    assert call.arguments_error is not None
    assert len(call.arguments_error) < 400


# --- emulated_messages ---------------------------------------------------------------------------


def test_messages_render_calls_and_results_as_plain_chat() -> None:
    history = [
        ChatMessage(role="system", content="You summarize."),
        ChatMessage(role="user", content="Text."),
        ChatMessage(
            role="assistant",
            tool_calls=[
                ToolCall(id="c-0", name="start_task"),
                ToolCall(id="c-1", name="complete_task", arguments={"result": 7}),
            ],
        ),
        ChatMessage(role="tool", tool_call_id="c-0", content="ok"),
        ChatMessage(role="tool", tool_call_id="c-1", content="error: result must be a string"),
        ChatMessage(role="tool", tool_call_id="other", content="?"),
    ]
    rendered = emulated_messages(history)
    assert rendered[:2] == [
        {"role": "system", "content": "You summarize."},
        {"role": "user", "content": "Text."},
    ]
    assert rendered[2]["role"] == "assistant"
    assert json.loads(rendered[2]["content"]) == {
        "calls": [
            {"name": "start_task", "arguments": {}},
            {"name": "complete_task", "arguments": {"result": 7}},
        ]
    }
    assert rendered[3:] == [
        {"role": "user", "content": "Result of start_task: ok"},
        {"role": "user", "content": "Result of complete_task: error: result must be a string"},
        {"role": "user", "content": "Result of a tool: ?"},
    ]
    # What the model wrote before reads back as the same calls.
    assert [c.name for c in parse_emulated_reply(rendered[2]["content"], TOOLS, "r")] == [
        "start_task",
        "complete_task",
    ]


def test_messages_keep_plain_assistant_text() -> None:
    assert emulated_messages([ChatMessage(role="assistant", content="Hello")]) == [
        {"role": "assistant", "content": "Hello"}
    ]
