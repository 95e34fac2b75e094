"""The server the official conformance suite expects, for measuring 05's proxy against it.

    python tests/conformance_fixture.py -t http --addr :3001

`conformance server --suite all` calls tools, prompts and resources by names
of its own (`test_simple_text`, `test_prompt_with_arguments`,
`test://static-text`) and expects each to behave a set way; this server offers
exactly those, in both eras: server-initiated sampling and elicitation on a
2025-11-25 session, `input_required` results (SEP-2322) for 2026-07-28, log
lines at the level each era asks for, progress, completions, subscriptions,
`list_changed`, and SSE streams that can be resumed after a cut (SEP-1699).
tests/test_conformance.py runs the suite against it directly and through 05.

It is written on the low-level `Server`: the suite checks the wire shapes
exactly, and a proxy's backend should be a server whose every answer is what
the test says it is.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.caching import CacheHint
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.subscriptions import PromptsListChanged, ToolsListChanged
from mcp.types import (
    INVALID_PARAMS,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    CallToolRequestParams,
    CompleteRequestParams,
    GetPromptRequestParams,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    UnsubscribeRequestParams,
)

from shared import configure_logging, parse_config
from shared.event_store import MemoryEventStore
from shared.serve import MCP_PATH, bound_address, listen, mcp_url, run_uvicorn, transport_security

NAME = "mcp-conformance-fixture"
IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
AUDIO = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
RETRY_MS = 100  # how soon a client whose stream was cut comes back (the SSE `retry` field)
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}
Message = dict[str, Any]


def arguments_of(**properties: Any) -> Message:
    return {"type": "object", "properties": properties, "required": sorted(properties)}


JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}
HEADER_ECHO = {
    "type": "object",
    "properties": {"text": {"type": "string", "x-mcp-header": "Text"}},
}
MRTR_TOOLS = (
    "test_input_required_result_elicitation",
    "test_input_required_result_sampling",
    "test_input_required_result_list_roots",
    "test_input_required_result_request_state",
    "test_input_required_result_multiple_inputs",
    "test_input_required_result_multi_round",
    "test_input_required_result_tampered_state",
    "test_input_required_result_capabilities",
)
TOOLS: dict[str, tuple[str, Message]] = {
    "test_simple_text": ("Answers with one line of text.", NO_ARGUMENTS),
    "test_image_content": ("Answers with an image.", NO_ARGUMENTS),
    "test_audio_content": ("Answers with a sound.", NO_ARGUMENTS),
    "test_embedded_resource": ("Answers with an embedded resource.", NO_ARGUMENTS),
    "test_multiple_content_types": ("Answers with text, an image and a resource.", NO_ARGUMENTS),
    "test_tool_with_logging": ("Writes three log lines while it runs.", NO_ARGUMENTS),
    "test_logging_tool": ("Writes log lines, which only a caller that asked for them gets.", NO_ARGUMENTS),
    "test_error_handling": ("Fails, as a tool error the model reads.", NO_ARGUMENTS),
    "test_tool_with_progress": ("Reports progress three times.", NO_ARGUMENTS),
    "test_sampling": ("Asks the client's model, mid-call (2025-11-25).", arguments_of(prompt={"type": "string"})),
    "test_elicitation": ("Asks the user, mid-call (2025-11-25).", arguments_of(message={"type": "string"})),
    "test_elicitation_sep1034_defaults": ("Asks the user with a default for every field.", NO_ARGUMENTS),
    "test_elicitation_sep1330_enums": ("Asks the user to pick from every kind of enum.", NO_ARGUMENTS),
    "test_reconnection": ("Cuts its own SSE stream mid-call; the client resumes it.", NO_ARGUMENTS),
    "json_schema_2020_12_tool": ("Takes arguments described in JSON Schema 2020-12.", JSON_SCHEMA_2020_12),
    "test_header_echo": ("Echoes an argument that is mirrored in a header.", HEADER_ECHO),
    "test_missing_capability": ("Needs the client's sampling capability.", NO_ARGUMENTS),
    "test_streaming_elicitation": ("Reports progress, then asks the user (2026-07-28).", NO_ARGUMENTS),
    "test_trigger_tool_change": ("Adds a tool and takes it away again: the list changed twice.", NO_ARGUMENTS),
    "test_trigger_prompt_change": ("Says the prompt list changed.", NO_ARGUMENTS),
    **{name: ("Asks for input by its result (SEP-2322).", NO_ARGUMENTS) for name in MRTR_TOOLS},
}
PROMPTS: list[Message] = [
    {"name": "test_simple_prompt", "description": "A prompt without arguments."},
    {
        "name": "test_prompt_with_arguments",
        "description": "A prompt with two arguments.",
        "arguments": [{"name": "arg1", "required": True}, {"name": "arg2", "required": True}],
    },
    {
        "name": "test_prompt_with_embedded_resource",
        "description": "A prompt with an embedded resource.",
        "arguments": [{"name": "resourceUri", "required": True}],
    },
    {"name": "test_prompt_with_image", "description": "A prompt with an image."},
    {"name": "test_input_required_result_prompt", "description": "A prompt that asks for input first (SEP-2322)."},
]
RESOURCES: dict[str, Message] = {
    "test://static-text": {
        "name": "static-text",
        "mimeType": "text/plain",
        "text": "This is the content of the static text resource.",
    },
    "test://static-binary": {"name": "static-binary", "mimeType": "image/png", "blob": IMAGE},
    "test://watched-resource": {
        "name": "watched-resource",
        "mimeType": "text/plain",
        "text": "Watched resource content",
    },
}
TEMPLATE = "test://template/{id}/data"

bus = InMemorySubscriptionBus()
extra_tools: dict[str, tuple[str, Message]] = {}  # what test_trigger_tool_change adds for a moment


def done(**result: Any) -> Message:
    """A final answer: 2026-07-28 requires the kind of result to be named, and 2025-11-25 lets it be."""
    return {"resultType": "complete", **result}


def text(value: str, *, is_error: bool = False) -> Message:
    return done(content=[{"type": "text", "text": value}], **({"isError": True} if is_error else {}))


def elicitation(message: str, **properties: Any) -> Message:
    schema = {"type": "object", "properties": properties, "required": sorted(properties)}
    return {"method": "elicitation/create", "params": {"mode": "form", "message": message, "requestedSchema": schema}}


def sampling(prompt: str, max_tokens: int = 100) -> Message:
    message = {"role": "user", "content": {"type": "text", "text": prompt}}
    return {"method": "sampling/createMessage", "params": {"messages": [message], "maxTokens": max_tokens}}


ROOTS: Message = {"method": "roots/list", "params": {}}


def input_required(requests: Mapping[str, Message], state: str | None = None) -> Message:
    return {
        "resultType": "input_required",
        "inputRequests": dict(requests),
        **({"requestState": state} if state else {}),
    }


def accepted(responses: Mapping[str, Any], key: str) -> Message | None:
    """The content of an accepted elicitation among a retry's `inputResponses`."""
    answer = responses.get(key)
    if not isinstance(answer, dict) or answer.get("action") != "accept":
        return None
    content = answer.get("content")
    return content if isinstance(content, dict) else None


def declared(ctx: ServerRequestContext[Any]) -> Message:
    capabilities = ctx.session.client_capabilities
    return capabilities.model_dump(by_alias=True, exclude_none=True) if capabilities is not None else {}


async def log(ctx: ServerRequestContext[Any], level: Any, message: str) -> None:
    with warnings.catch_warnings():  # the logging capability is deprecated in 2026-07-28, and still tested
        warnings.simplefilter("ignore")
        await ctx.session.send_log_message(level, message, NAME, related_request_id=ctx.request_id)


async def lists_changed(ctx: ServerRequestContext[Any], kind: str) -> None:
    """Say so in the caller's era: on its 2025-11-25 session, or to 2026-07-28 listen streams."""
    if ctx.protocol_version >= "2026":
        await bus.publish(ToolsListChanged() if kind == "tools" else PromptsListChanged())
    elif kind == "tools":
        await ctx.session.send_tool_list_changed()
    else:
        await ctx.session.send_prompt_list_changed()


async def mid_call_tool(ctx: ServerRequestContext[Any], name: str, arguments: Mapping[str, Any]) -> Message:
    """The tools that ask the client something while they run: a 2025-11-25 session carries the question."""
    session: ServerSession = ctx.session
    if name == "test_sampling":
        asked = [SamplingMessage(role="user", content=TextContent(type="text", text=str(arguments.get("prompt"))))]
        answer = await session.create_message(asked, max_tokens=100, related_request_id=ctx.request_id)
        return text(f"LLM response: {getattr(answer.content, 'text', 'No response')}")
    if name == "test_elicitation":
        schema = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"]}
        reply = await session.elicit_form(str(arguments.get("message")), schema, ctx.request_id)
        return text(f"User response: action={reply.action}, content={json.dumps(reply.content or {})}")
    if name == "test_elicitation_sep1034_defaults":
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "default": "John Doe"},
                "age": {"type": "integer", "default": 30},
                "score": {"type": "number", "default": 95.5},
                "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
                "verified": {"type": "boolean", "default": True},
            },
        }
        reply = await session.elicit_form("Please review the fields", schema, ctx.request_id)
        return text(f"Elicitation completed: action={reply.action}, content={json.dumps(reply.content or {})}")
    schema = {
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
            "titledSingle": {
                "type": "string",
                "oneOf": [{"const": "value1", "title": "First Option"}, {"const": "value2", "title": "Second Option"}],
            },
            "legacyEnum": {"type": "string", "enum": ["opt1", "opt2"], "enumNames": ["Option One", "Option Two"]},
            "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2"]}},
            "titledMulti": {
                "type": "array",
                "items": {
                    "anyOf": [
                        {"const": "value1", "title": "First Choice"},
                        {"const": "value2", "title": "Second Choice"},
                    ]
                },
            },
        },
    }
    reply = await session.elicit_form("Please pick from each list", schema, ctx.request_id)
    return text(f"Elicitation completed: action={reply.action}, content={json.dumps(reply.content or {})}")


def input_tool(ctx: ServerRequestContext[Any], name: str, responses: Mapping[str, Any], state: Any) -> Message:
    """The tools that ask by their result (SEP-2322): each retry brings the answers, and the state we gave."""
    if name == "test_input_required_result_elicitation":
        content = accepted(responses, "user_name")
        if content is None or not isinstance(content.get("name"), str):
            return input_required({"user_name": elicitation("What is your name?", name={"type": "string"})})
        return text(f"Hello, {content['name']}!")
    if name == "test_input_required_result_sampling":
        answer = responses.get("capital_question")
        if not isinstance(answer, dict) or "content" not in answer:
            return input_required({"capital_question": sampling("What is the capital of France?")})
        return text(f"Sampling response: {(answer.get('content') or {}).get('text', '')}")
    if name == "test_input_required_result_list_roots":
        answer = responses.get("client_roots")
        if not isinstance(answer, dict) or not isinstance(answer.get("roots"), list):
            return input_required({"client_roots": ROOTS})
        return text("Client roots: " + ", ".join(str(root.get("uri")) for root in answer["roots"]))
    if name in ("test_input_required_result_request_state", "test_input_required_result_tampered_state"):
        if accepted(responses, "confirm") is None:
            return input_required({"confirm": elicitation("Please confirm", ok={"type": "boolean"})}, "confirm-v1")
        if state != "confirm-v1":
            raise MCPError(code=INVALID_PARAMS, message="Invalid or expired requestState")
        return text("state-ok: confirmed")
    if name == "test_input_required_result_multiple_inputs":
        if not all(key in responses for key in ("user_name", "greeting", "client_roots")):
            asked = {
                "user_name": elicitation("What is your name?", name={"type": "string"}),
                "greeting": sampling("Generate a greeting", 50),
                "client_roots": ROOTS,
            }
            return input_required(asked, "multiple-inputs-v1")
        return text("All requested inputs received")
    if name == "test_input_required_result_multi_round":
        if state is None:
            return input_required({"step1": elicitation("Step 1: your name?", name={"type": "string"})}, "round-1")
        if state == "round-1":
            return input_required({"step2": elicitation("Step 2: your colour?", color={"type": "string"})}, "round-2")
        if state == "round-2":
            return text("Both rounds answered")
        raise MCPError(code=INVALID_PARAMS, message="Invalid or expired requestState")
    can = declared(ctx)  # test_input_required_result_capabilities: ask only for what the client can give
    asked = {}
    if "sampling" in can:
        asked["sampling"] = sampling("Generate a greeting")
    if "elicitation" in can:
        asked["elicitation"] = elicitation("What is your name?", name={"type": "string"})
    if "roots" in can:
        asked["roots"] = ROOTS
    if not asked or all(key in responses for key in asked):
        return text("Declared-capability input answered")
    return input_required(asked)


async def call_tool(ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> Any:
    name, arguments = params.name, params.arguments or {}
    raw = ctx.params or {}
    responses = raw.get("inputResponses") if isinstance(raw.get("inputResponses"), dict) else {}
    if name in MRTR_TOOLS:
        return input_tool(ctx, name, responses or {}, raw.get("requestState"))
    if name in (
        "test_sampling",
        "test_elicitation",
        "test_elicitation_sep1034_defaults",
        "test_elicitation_sep1330_enums",
    ):
        return await mid_call_tool(ctx, name, arguments)
    if name == "test_simple_text":
        return text("This is a simple text response for testing.")
    if name == "test_image_content":
        return done(content=[{"type": "image", "data": IMAGE, "mimeType": "image/png"}])
    if name == "test_audio_content":
        return done(content=[{"type": "audio", "data": AUDIO, "mimeType": "audio/wav"}])
    if name == "test_embedded_resource":
        resource = {
            "uri": "test://embedded-resource",
            "mimeType": "text/plain",
            "text": "This is an embedded resource content.",
        }
        return done(content=[{"type": "resource", "resource": resource}])
    if name == "test_multiple_content_types":
        resource = {
            "uri": "test://mixed-content-resource",
            "mimeType": "application/json",
            "text": json.dumps({"test": "data", "value": 123}),
        }
        return done(
            content=[
                {"type": "text", "text": "Multiple content types test:"},
                {"type": "image", "data": IMAGE, "mimeType": "image/png"},
                {"type": "resource", "resource": resource},
            ]
        )
    if name in ("test_tool_with_logging", "test_logging_tool"):
        for line in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await log(ctx, "info", line)
            await anyio.sleep(0.02)
        return text("Tool with logging executed successfully")
    if name == "test_error_handling":
        return text("This tool intentionally returns an error for testing", is_error=True)
    if name == "test_tool_with_progress":
        for step in (0, 50, 100):
            await ctx.session.report_progress(step, 100, f"Completed step {step} of 100")
            await anyio.sleep(0.02)
        token = (raw.get("_meta") or {}).get("progressToken")
        return text(str(token))
    if name == "test_reconnection":
        await log(ctx, "info", "Before disconnect")
        if ctx.close_sse_stream is not None:
            await ctx.close_sse_stream()  # the client comes back with Last-Event-ID and hears the rest
        await anyio.sleep(0.2)
        await log(ctx, "info", "After reconnect")
        return text("Reconnection test completed")
    if name == "json_schema_2020_12_tool":
        return text(json.dumps(arguments))
    if name == "test_header_echo":
        return text(str(arguments.get("text", "")))
    if name == "test_missing_capability":
        if "sampling" not in declared(ctx):
            raise MCPError(
                code=MISSING_REQUIRED_CLIENT_CAPABILITY,
                message="This tool needs the client's sampling capability",
                data={"requiredCapabilities": {"sampling": {}}},
            )
        return text("The client declared sampling")
    if name == "test_streaming_elicitation":
        await ctx.session.report_progress(0, 1, "About to ask")
        if accepted(responses or {}, "confirm") is None:
            return input_required({"confirm": elicitation("Go on?", ok={"type": "boolean"})})
        return text("Confirmed")
    if name == "test_trigger_tool_change":
        extra_tools["test_temporary_tool"] = ("Here for a moment only.", NO_ARGUMENTS)
        await lists_changed(ctx, "tools")
        extra_tools.clear()
        await lists_changed(ctx, "tools")
        return text("The tool list changed")
    if name == "test_trigger_prompt_change":
        await lists_changed(ctx, "prompts")
        return text("The prompt list changed")
    raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {name}")


async def list_tools(_ctx: ServerRequestContext[Any], _params: PaginatedRequestParams | None) -> Any:
    tools = {**TOOLS, **extra_tools}
    return done(tools=[{"name": n, "description": d, "inputSchema": s} for n, (d, s) in tools.items()])


def input_schema(name: str) -> Mapping[str, Any] | None:
    """For the SDK's check of `Mcp-Param-*` headers against the arguments (SEP-2243)."""
    found = TOOLS.get(name) or extra_tools.get(name)
    return found[1] if found else None


async def list_prompts(_ctx: ServerRequestContext[Any], _params: PaginatedRequestParams | None) -> Any:
    return done(prompts=PROMPTS)


async def get_prompt(ctx: ServerRequestContext[Any], params: GetPromptRequestParams) -> Any:
    arguments = params.arguments or {}

    def user(*content: Message) -> Message:
        return done(messages=[{"role": "user", "content": item} for item in content])

    if params.name == "test_simple_prompt":
        return user({"type": "text", "text": "This is a simple prompt for testing."})
    if params.name == "test_prompt_with_arguments":
        said = f"Prompt with arguments: arg1='{arguments.get('arg1')}', arg2='{arguments.get('arg2')}'"
        return user({"type": "text", "text": said})
    if params.name == "test_prompt_with_embedded_resource":
        resource = {
            "uri": arguments.get("resourceUri", "test://example-resource"),
            "mimeType": "text/plain",
            "text": "Embedded resource content for testing.",
        }
        return user(
            {"type": "resource", "resource": resource},
            {"type": "text", "text": "Please process the embedded resource above."},
        )
    if params.name == "test_prompt_with_image":
        return user(
            {"type": "image", "data": IMAGE, "mimeType": "image/png"},
            {"type": "text", "text": "Please analyze the image above."},
        )
    if params.name == "test_input_required_result_prompt":
        raw = ctx.params or {}
        responses = raw.get("inputResponses") if isinstance(raw.get("inputResponses"), dict) else {}
        content = accepted(responses or {}, "user_context")
        if content is None or not isinstance(content.get("context"), str):
            return input_required({"user_context": elicitation("What context?", context={"type": "string"})})
        return user({"type": "text", "text": f"Prompt context: {content['context']}"})
    raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt: {params.name}")


async def list_resources(_ctx: ServerRequestContext[Any], _params: PaginatedRequestParams | None) -> Any:
    listed = [{"uri": uri, "name": r["name"], "mimeType": r["mimeType"]} for uri, r in RESOURCES.items()]
    return done(resources=listed)


async def list_resource_templates(_ctx: ServerRequestContext[Any], _params: PaginatedRequestParams | None) -> Any:
    return done(resourceTemplates=[{"uriTemplate": TEMPLATE, "name": "template", "mimeType": "application/json"}])


async def read_resource(_ctx: ServerRequestContext[Any], params: ReadResourceRequestParams) -> Any:
    uri = str(params.uri)
    if uri in RESOURCES:
        resource = RESOURCES[uri]
        body = {key: resource[key] for key in ("mimeType", "text", "blob") if key in resource}
        return done(contents=[{"uri": uri, **body}])
    if uri.startswith("test://template/") and uri.endswith("/data"):
        identifier = uri.removeprefix("test://template/").removesuffix("/data")
        data = {"id": identifier, "templateTest": True, "data": f"Data for ID: {identifier}"}
        return done(contents=[{"uri": uri, "mimeType": "application/json", "text": json.dumps(data)}])
    raise MCPError(code=-32602, message=f"Resource not found: {uri}", data={"uri": uri})


async def subscribe(_ctx: ServerRequestContext[Any], _params: SubscribeRequestParams) -> Any:
    return {}


async def unsubscribe(_ctx: ServerRequestContext[Any], _params: UnsubscribeRequestParams) -> Any:
    return {}


async def set_level(_ctx: ServerRequestContext[Any], _params: SetLevelRequestParams) -> Any:
    return {}


async def complete(_ctx: ServerRequestContext[Any], _params: CompleteRequestParams) -> Any:
    return done(completion={"values": [], "total": 0, "hasMore": False})


def make_server() -> Server[Any]:
    server: Server[Any] = Server(
        NAME,
        version="1.0.0",
        cache_hints={
            "tools/list": CacheHint(ttl_ms=60_000, scope="public"),
            "prompts/list": CacheHint(ttl_ms=60_000, scope="public"),
            "resources/list": CacheHint(ttl_ms=60_000, scope="public"),
            "resources/templates/list": CacheHint(ttl_ms=60_000, scope="public"),
            "resources/read": CacheHint(ttl_ms=1_000, scope="public"),
        },
        get_tool_input_schema=input_schema,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_set_logging_level=set_level,
        on_completion=complete,
        on_subscriptions_listen=ListenHandler(bus),
    )
    # requestState comes back from the client: sealed, so a changed one is refused (the tampered-state check).
    server.middleware.append(RequestStateBoundary(RequestStateSecurity.ephemeral(), default_audience=NAME))
    return server


def main(argv: Sequence[str] | None = None) -> None:
    config, _args = parse_config(argv, default_port=3001)
    configure_logging(config.log_level, config.log_format)
    server = make_server()
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=transport_security(config),
        host=config.addr.host,
        event_store=MemoryEventStore(),
        retry_interval=RETRY_MS,
    )
    sock = listen(config.addr)
    run_uvicorn(app, sock, config, mcp_url(bound_address(sock, config)))


if __name__ == "__main__":
    main()
