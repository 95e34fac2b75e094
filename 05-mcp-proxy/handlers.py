"""The request handlers: what the proxy answers to each MCP method, from its catalogue or from a backend.

Lists come from the merged catalogue (catalogue.py), narrowed to the
backends the caller's token opens; everything else goes to the backend that
owns the name (forward.py). `subscriptions/listen` is the SDK's own handler,
told which resources the stream follows.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any

import anyio
from catalogue import Item, publish_links
from forward import call_backend_tool, forward, forward_or_fail
from front_door import opened
from mcp import MCPError
from mcp.server import ServerRequestContext
from mcp.server.subscriptions import ListenHandler
from mcp.types import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    CallToolRequestParams,
    CompleteRequestParams,
    GetPromptRequestParams,
    PaginatedRequestParams,
    PromptReference,
    ReadResourceRequestParams,
    SetLevelRequestParams,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    UnsubscribeRequestParams,
)
from proxy import FOLLOWER_TIMEOUT, MAX_FOLLOWERS, Proxy, session_key
from starlette.types import Scope

# What a handler returns: the result as a plain dict. The SDK checks a dict against the spec's schema once, on
# the way out, instead of our building a model from the backend's answer first (its types name only models).
Reply = Any


def listed(ctx: ServerRequestContext[Proxy], kind: str) -> Reply:
    """A list, as the catalogue has it now, of what the caller's token opens."""
    return {kind: ctx.lifespan_context.catalogue.visible(kind, opened(ctx.request)), "resultType": "complete"}


def find(ctx: ServerRequestContext[Proxy], kind: str, name: str) -> Item | None:
    """The item the caller names, if its token opens the backend that offers it."""
    return ctx.lifespan_context.catalogue.lookup(kind, name, opened(ctx.request))


async def list_tools(ctx: ServerRequestContext[Proxy], params: PaginatedRequestParams | None) -> Reply:
    ctx.lifespan_context.remember(ctx)
    return listed(ctx, "tools")


async def call_tool(ctx: ServerRequestContext[Proxy], params: CallToolRequestParams) -> Reply:
    proxy = ctx.lifespan_context
    proxy.remember(ctx)
    item = find(ctx, "tools", params.name)
    if item is None:
        if (why := proxy.catalogue.quarantined.get(params.name)) is not None:
            raise MCPError(code=INVALID_PARAMS, message=f"Tool {params.name} is quarantined: {why}")
        raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {params.name}")
    return await call_backend_tool(item, params.arguments or {}, partial(forward, ctx))


async def list_prompts(ctx: ServerRequestContext[Proxy], params: PaginatedRequestParams | None) -> Reply:
    ctx.lifespan_context.remember(ctx)
    return listed(ctx, "prompts")


async def get_prompt(ctx: ServerRequestContext[Proxy], params: GetPromptRequestParams) -> Reply:
    item = find(ctx, "prompts", params.name)
    if item is None:
        raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
    arguments = {"name": item.original["name"], **({"arguments": params.arguments} if params.arguments else {})}
    result = await forward_or_fail(ctx, item, "prompts/get", arguments)
    publish_links(item.owner, [m.get("content") for m in result.get("messages") or () if isinstance(m, dict)])
    return result


async def list_resources(ctx: ServerRequestContext[Proxy], params: PaginatedRequestParams | None) -> Reply:
    ctx.lifespan_context.remember(ctx)
    return listed(ctx, "resources")


async def subscribe_resource(ctx: ServerRequestContext[Proxy], params: SubscribeRequestParams) -> Reply:
    """2025-11-25: follow one resource; its backend is asked for updates while anyone follows it."""
    proxy, uri, allowed, key = ctx.lifespan_context, str(params.uri), opened(ctx.request), session_key(ctx)
    item = proxy.catalogue.resource(uri, allowed)
    if item is None:
        raise MCPError(code=INVALID_PARAMS, message=f"Unknown resource: {uri}", data={"uri": uri})
    if proxy.followable(uri, allowed) is None:
        name = item.owner.backend.name
        raise MCPError(code=METHOD_NOT_FOUND, message=f"The server {name!r} does not offer resource subscriptions")
    following = proxy.followers.setdefault(uri, OrderedDict())
    following[key] = ctx.session
    following.move_to_end(key)
    while len(following) > MAX_FOLLOWERS:  # sessions that went away without unsubscribing
        following.popitem(last=False)
    await proxy.refollow()
    return {}


async def unsubscribe_resource(ctx: ServerRequestContext[Proxy], params: UnsubscribeRequestParams) -> Reply:
    proxy, uri = ctx.lifespan_context, str(params.uri)
    following = proxy.followers.get(uri, OrderedDict())
    following.pop(session_key(ctx), None)
    if not following:
        proxy.followers.pop(uri, None)
    await proxy.refollow()
    return {}


async def list_resource_templates(ctx: ServerRequestContext[Proxy], params: PaginatedRequestParams | None) -> Reply:
    return listed(ctx, "resourceTemplates")


async def read_resource(ctx: ServerRequestContext[Proxy], params: ReadResourceRequestParams) -> Reply:
    uri = str(params.uri)
    item = ctx.lifespan_context.catalogue.resource(uri, opened(ctx.request))  # listed, or fits a backend's template
    if item is None:
        raise MCPError(code=INVALID_PARAMS, message=f"Unknown resource: {uri}", data={"uri": uri})
    backend = item.owner.backend
    result = await forward_or_fail(ctx, item, "resources/read", {"uri": backend.backend_uri(uri)})
    for content in result.get("contents") or ():  # each says which resource it is: by the name we gave it
        if isinstance(content, dict) and isinstance(content.get("uri"), str):
            content["uri"] = backend.public_uri(content["uri"])
    return result


async def set_level(ctx: ServerRequestContext[Proxy], params: SetLevelRequestParams) -> Reply:
    await ctx.lifespan_context.set_log_level(ctx, params.level)
    return {}


async def complete(ctx: ServerRequestContext[Proxy], params: CompleteRequestParams) -> Reply:
    """Completions for a prompt's or a resource template's argument: asked of the backend that offers it."""
    asked = ctx.params or {}
    ref = dict(asked.get("ref") or {})
    if isinstance(params.ref, PromptReference):
        item = find(ctx, "prompts", params.ref.name)
        if item is not None:
            ref["name"] = item.original["name"]
    else:
        uri = params.ref.uri
        item = find(ctx, "resourceTemplates", uri) or find(ctx, "resources", uri)
        if item is not None:
            ref["uri"] = item.original.get("uriTemplate") or item.original.get("uri")
    if item is None:
        raise MCPError(code=INVALID_PARAMS, message=f"Unknown reference: {ref}")
    forwarded = {key: value for key, value in asked.items() if key in ("argument", "context")}
    return await forward_or_fail(ctx, item, "completion/complete", {**forwarded, "ref": ref})


class Listen:
    """`subscriptions/listen` (2026-07-28): the SDK's handler, told which resources the stream follows.

    Only URIs of backends the caller's token opens are passed on, so the
    acknowledgement says honestly which ones this stream will hear about;
    while the stream is open their backends are asked for updates.
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy, self.handler = proxy, ListenHandler(proxy.bus)

    def close(self) -> None:
        """End every open stream gracefully (on shutdown)."""
        self.handler.close()

    async def __call__(
        self, ctx: ServerRequestContext[Proxy], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        proxy, allowed = self.proxy, opened(ctx.request)
        asked = params.notifications.resource_subscriptions or []
        uris = [uri for uri in asked if proxy.followable(uri, allowed) is not None]
        if uris != asked:
            notifications = params.notifications.model_copy(update={"resource_subscriptions": uris or None})
            params = params.model_copy(update={"notifications": notifications})
        proxy.listeners.update(uris)
        try:
            if uris:
                await proxy.refollow()
            return await self.handler(ctx, params)
        finally:
            proxy.listeners.subtract(uris)
            for uri in uris:
                if proxy.listeners[uri] <= 0:
                    del proxy.listeners[uri]
            if uris:
                with anyio.CancelScope(shield=True), anyio.move_on_after(FOLLOWER_TIMEOUT):
                    await proxy.refollow()


def express_route(proxy: Proxy, name: str, scope: Scope) -> Item | None:
    """The tool, if a call to it may take the express lane (express.py): its backend speaks 2026-07-28 (so it
    cannot ask a question mid-call) and it mirrors no argument in a header (which the SDK checks)."""
    item = proxy.catalogue.lookup("tools", name, opened(scope))
    return item if item is not None and item.owner.modern and not item.header_params else None
