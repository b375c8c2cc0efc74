"""Tool calls for models without native tool calling, carried as constrained JSON replies.

A provider configured with `TASKPOOL_TOOL_MODE=json` gets no `tools` parameter. Instead the request
carries `response_format_for(tools)`, a JSON schema that an OpenAI-compatible server (llama.cpp
turns it into a grammar) uses to force the reply into one shape:

    {"calls": [{"name": "complete_task", "arguments": {"result": "..."}}]}

The shape is flat and small so that a 135M-parameter model can fill it: the grammar writes the keys,
and the model only picks a tool name from a fixed set and writes the argument values. By default a
reply holds one call: given room for more, SmolLM2-135M followed almost every `complete_task` with
made-up `fail_task` or `report_progress` calls.
`emulation_instructions` tells the model the same in words, `parse_emulated_reply` turns the reply
back into `ToolCall`s, and `emulated_messages` renders a conversation that contains earlier tool
calls and their results in a form such a model (and its chat template) understands.

Pure functions, no I/O: usable from activities and tests alike.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from taskpool.domain.turns import ChatMessage, ToolCall, ToolSpec

SCHEMA_NAME = "tool_calls"
DEFAULT_MAX_CALLS = 1

# Measured on SmolLM2-135M over ten short texts: with "..." it copied the placeholder once; with
# "<result>" three times; with a descriptive sentence every time. `_copied_placeholder` catches it.
_PLACEHOLDER = "..."
_SHAPE = '{"calls": [{"name": "<tool>", "arguments": {...}}]}'
_NAME_KEYS = ("name", "tool", "function")
_ARGUMENT_KEYS = ("arguments", "args", "parameters", "input")


def response_format_for(
    tools: Sequence[ToolSpec],
    *,
    max_calls: int = DEFAULT_MAX_CALLS,
    max_string_length: int | None = None,
) -> dict[str, Any]:
    """The OpenAI `response_format` that only admits a list of 1 to `max_calls` calls of `tools`.

    Raise `max_calls` for models able to plan several calls in one reply (a whole lifecycle needs
    three); the cap also keeps a small model from repeating calls until it runs out of tokens.

    `max_string_length` caps every string argument that sets no `maxLength` of its own. A small
    model sometimes repeats itself inside a string until `max_tokens` cuts the reply off, which
    leaves invalid JSON; with a cap the grammar closes the string and the call stays usable.
    """
    if not tools:
        raise ValueError("tool emulation needs at least one tool")
    if max_calls < 1:
        raise ValueError(f"max_calls must be at least 1, got {max_calls}")
    if max_string_length is not None and max_string_length < 1:
        raise ValueError(f"max_string_length must be at least 1, got {max_string_length}")
    one_call = {"anyOf": [_call_schema(tool, max_string_length) for tool in tools]}
    schema = {
        "type": "object",
        "properties": {
            "calls": {"type": "array", "items": one_call, "minItems": 1, "maxItems": max_calls}
        },
        "required": ["calls"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema}}


def emulation_instructions(tools: Sequence[ToolSpec], *, example: str | Sequence[str] = ()) -> str:
    """Text for the end of the system prompt: the reply shape and one line per tool.

    `example` names the tools, in order, of a sample reply. Tiny models copy the sample's calls far
    more reliably than they follow prose, so name what the usual reply should call (for taskpool's
    agent, the tool that finishes the task).
    """
    if not tools:
        raise ValueError("tool emulation needs at least one tool")
    lines = [
        f"You act only by calling tools. Reply with JSON only, no other text: {_SHAPE}",
        "Tools:",
    ]
    lines += [f"- {tool.name} {_signature(tool.parameters)}: {tool.description}" for tool in tools]
    example_names = [example] if isinstance(example, str) else list(example)
    if example_names:
        calls = []
        for name in example_names:
            tool = _find(tools, name)
            if tool is None:
                raise ValueError(f"example tool {name!r} is not one of {_names(tools)}")
            calls.append({"name": tool.name, "arguments": _placeholders(tool.parameters)})
        lines.append(f"Example: {json.dumps({'calls': calls})}")
    return "\n".join(lines)


def parse_emulated_reply(content: str, tools: Sequence[ToolSpec], id_prefix: str) -> list[ToolCall]:
    """The tool calls in a reply written under `response_format_for(tools)`.

    Tolerant of what unconstrained servers let through: a bare call instead of the `calls` object,
    a bare list, code fences, prose around the JSON, arguments sent as a JSON string. Ids are
    `<id_prefix>-<index>`, so they are stable across retries of the same turn.

    It never raises. A call naming an unknown tool, or whose arguments are not an object or copy
    the example's placeholder, keeps its name and gets `arguments_error`; a reply that is not JSON,
    or JSON of another shape, becomes one call with an empty name and `arguments_error` saying what
    was wrong. Either way the agent can tell the model. Arguments are not checked against the
    tool's schema: that is the agent's job. An empty reply gives an empty list (the model said
    nothing; the agent nudges it).
    """
    text = _strip_fences(content.strip())
    if not text:
        return []
    parsed = _load_json(text)
    if parsed is _NOT_JSON:
        return [_problem(id_prefix, 0, f"the reply is not valid JSON: {_excerpt(text)}")]
    items = _call_items(parsed)
    if items is None:
        return [
            _problem(
                id_prefix, 0, f"the reply is JSON but not a list of tool calls: {_excerpt(text)}"
            )
        ]
    if not items:
        return [_problem(id_prefix, 0, "the reply's list of tool calls is empty")]
    return [_to_tool_call(item, tools, f"{id_prefix}-{index}") for index, item in enumerate(items)]


def emulated_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """`messages` as plain OpenAI chat messages for a server that is given no `tools`.

    An assistant turn's tool calls become its content, in the same JSON shape the model is asked to
    write, and each tool result becomes a user message naming the call it answers: a chat template
    without tool support would otherwise drop both or the server would reject them.
    """
    rendered: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            calls = [
                {"name": call.name, "arguments": call.arguments} for call in message.tool_calls
            ]
            names_by_id.update((call.id, call.name) for call in message.tool_calls)
            rendered.append({"role": "assistant", "content": json.dumps({"calls": calls})})
        elif message.role == "tool":
            name = names_by_id.get(message.tool_call_id or "", "a tool")
            content = f"Result of {name}: {message.content or ''}"
            rendered.append({"role": "user", "content": content})
        else:
            rendered.append({"role": message.role, "content": message.content or ""})
    return rendered


# --- Schema --------------------------------------------------------------------------------------


def _call_schema(tool: ToolSpec, max_string_length: int | None) -> dict[str, Any]:
    arguments = _arguments_schema(tool, max_string_length)
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _arguments_schema(tool: ToolSpec, max_string_length: int | None) -> dict[str, Any]:
    schema = copy.deepcopy(tool.parameters)
    if not schema:
        schema = {"type": "object", "properties": {}}
    # Left open, the grammar lets a small model invent extra keys instead of closing the object.
    if schema.get("type") == "object" and "properties" in schema:
        schema.setdefault("additionalProperties", False)
    if max_string_length is not None:
        _cap_strings(schema, max_string_length)
    return schema


def _cap_strings(schema: Any, limit: int) -> None:
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "string" or (
        isinstance(schema.get("type"), list) and "string" in schema["type"]
    ):
        schema.setdefault("maxLength", limit)
    for nested in (schema.get("properties") or {}).values():
        _cap_strings(nested, limit)
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key) or ():
            _cap_strings(option, limit)
    _cap_strings(schema.get("items"), limit)


# --- Instructions --------------------------------------------------------------------------------


def _signature(parameters: dict[str, Any]) -> str:
    properties: dict[str, Any] = parameters.get("properties") or {}
    if not properties:
        return "{}"
    required = set(parameters.get("required") or ())
    fields = [
        f'"{name}"{"" if name in required else "?"}: {_type_name(schema)}'
        for name, schema in properties.items()
    ]
    return "{" + ", ".join(fields) + "}"


def _type_name(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "any"
    if "enum" in schema:
        return " or ".join(json.dumps(value) for value in schema["enum"])
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return " or ".join(_type_name(option) for option in options)
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    if kind == "array":
        return f"list of {_type_name(schema.get('items'))}"
    return str(kind) if kind else "any"


def _placeholders(parameters: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = parameters.get("properties") or {}
    return {name: _placeholder(schema) for name, schema in properties.items()}


def _placeholder(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return _PLACEHOLDER
    if schema.get("enum"):
        return schema["enum"][0]
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return _placeholder(options[0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0] if kind else None
    placeholders: dict[str | None, Any] = {
        "number": 0,
        "integer": 0,
        "boolean": False,
        "array": [],
        "object": {},
        "null": None,
    }
    return placeholders.get(kind, _PLACEHOLDER)


# --- Parsing -------------------------------------------------------------------------------------

_NOT_JSON = object()


def _strip_fences(text: str) -> str:
    if not text.startswith("```"):
        return text
    body = text.split("\n", 1)[1] if "\n" in text else ""
    return body.rsplit("```", 1)[0].strip()


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    # Prose around the JSON: read the value that starts at the first brace or bracket. Only the
    # first ones, so that a reply cut off inside the list is not mistaken for its first calls.
    decoder = json.JSONDecoder()
    starts = sorted(index for index in (text.find("{"), text.find("[")) if index >= 0)
    for start in starts:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        return value
    return _NOT_JSON


def _call_items(parsed: Any) -> list[Any] | None:
    if isinstance(parsed, list):
        return parsed
    if not isinstance(parsed, dict):
        return None
    for key in ("calls", "tool_calls"):
        if isinstance(parsed.get(key), list):
            return list(parsed[key])
    if any(key in parsed for key in _NAME_KEYS):
        return [parsed]
    return None


def _to_tool_call(item: Any, tools: Sequence[ToolSpec], call_id: str) -> ToolCall:
    if not isinstance(item, dict):
        return ToolCall(
            id=call_id,
            name="",
            arguments_error=f"a tool call must be an object, got {_excerpt(json.dumps(item))}",
        )
    name, raw_arguments = _name_and_arguments(item)
    if not name:
        return ToolCall(
            id=call_id,
            name="",
            arguments_error=f"a tool call has no tool name: {_excerpt(json.dumps(item))}",
        )
    arguments, error = _arguments(raw_arguments)
    if _find(tools, name) is None:
        error = f"unknown tool {name!r}; the tools are {_names(tools)}"
    elif error is None:
        error = _copied_placeholder(arguments)
    return ToolCall(id=call_id, name=name, arguments=arguments, arguments_error=error)


def _name_and_arguments(item: dict[str, Any]) -> tuple[str, Any]:
    # OpenAI's own shape nests both under "function"; accept it from models that imitate it.
    function = item.get("function")
    if isinstance(function, dict):
        item = function
    name = next((item[key] for key in _NAME_KEYS if isinstance(item.get(key), str)), "")
    arguments = next((item[key] for key in _ARGUMENT_KEYS if key in item), None)
    return name.strip(), arguments


def _arguments(raw: Any) -> tuple[dict[str, Any], str | None]:
    if raw is None:
        return {}, None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return {}, f"the arguments are not valid JSON: {_excerpt(raw)}"
    if not isinstance(raw, dict):
        return {}, f"the arguments must be a JSON object, got {_excerpt(json.dumps(raw))}"
    return raw, None


def _copied_placeholder(arguments: dict[str, Any]) -> str | None:
    for key, value in arguments.items():
        if value == _PLACEHOLDER:
            return (
                f"argument {key!r} is {value!r}, copied from the example; "
                "write the real value instead"
            )
    return None


def _problem(id_prefix: str, index: int, reason: str) -> ToolCall:
    return ToolCall(
        id=f"{id_prefix}-{index}", name="", arguments_error=f"{reason}. Reply with {_SHAPE}"
    )


def _find(tools: Sequence[ToolSpec], name: str) -> ToolSpec | None:
    return next((tool for tool in tools if tool.name == name), None)


def _names(tools: Sequence[ToolSpec]) -> str:
    return ", ".join(tool.name for tool in tools)


def _excerpt(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
