"""The catalogue: every backend's tools, prompts, resources and templates, merged under the names clients see.

Tools and prompts get their backend's prefix (`basic__echo`), resource URIs and
templates its namespace (`basic+file:///…`). A tool whose definition changed
since it was pinned is left out (quarantined) until someone approves it, and
two backends offering the same public name is a clash: the first in the
configuration keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from calls import Message
from mcp.shared.inbound import x_mcp_header_map
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate
from opentelemetry import metrics
from pins import NEW, Pins
from proxy_config import Backend, clash_line
from supervisor import Connection

from shared import INSTRUMENTATION_NAME

KINDS = ("tools", "prompts", "resources", "resourceTemplates")
KIND_NAMES = {"tools": "tool", "prompts": "prompt", "resources": "resource", "resourceTemplates": "resource template"}

log = structlog.get_logger("mcp-proxy")
pin_violations = metrics.get_meter(INSTRUMENTATION_NAME).create_counter(
    "mcp.proxy.pin_violations", description="Tool definitions that changed"
)


@dataclass
class Item:
    """One thing a backend offers, under the name clients see it by."""

    owner: Connection
    original: Message  # as the backend described it: its own name is what we call it by
    public: Message  # as clients see it
    header_params: dict[tuple[str, ...], str] = field(default_factory=dict)  # arguments a call mirrors in headers


@dataclass
class Catalogue:
    """What clients see, by kind and public name; each lookup honours what the caller's token opens."""

    items: dict[str, dict[str, Item]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    templates: list[tuple[UriTemplate, Item]] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)  # public tool name -> why
    conflicts: list[str] = field(default_factory=list)  # one line per pair of backends offering the same names

    def lookup(self, kind: str, name: str, allowed: frozenset[str] | None) -> Item | None:
        """The item clients know by `name`, if the caller's token opens its backend (`allowed`; None: all)."""
        item = self.items[kind].get(name)
        return item if item is not None and (allowed is None or item.owner.backend.name in allowed) else None

    def resource(self, uri: str, allowed: frozenset[str] | None) -> Item | None:
        """The resource a URI names, listed or described by a template, if the caller's token opens its backend."""
        item = self.lookup("resources", uri, allowed)
        if item is not None:
            return item
        for template, candidate in self.templates:
            if (allowed is None or candidate.owner.backend.name in allowed) and template.match(uri) is not None:
                return candidate
        return None

    def visible(self, kind: str, allowed: frozenset[str] | None) -> list[Message]:
        items = self.items[kind].values()
        return [item.public for item in items if allowed is None or item.owner.backend.name in allowed]

    def input_schema(self, tool: str) -> Mapping[str, Any] | None:
        item = self.items["tools"].get(tool)
        return item.public.get("inputSchema") if item is not None else None

    def changed_since(self, before: Catalogue) -> set[str]:
        """The lists clients must be told changed (templates are part of the resources list)."""
        return {
            "resources" if kind == "resourceTemplates" else kind
            for kind in KINDS
            if [i.public for i in self.items[kind].values()] != [i.public for i in before.items[kind].values()]
        }


def merge(
    backends: Sequence[Backend], connections: Mapping[str, Connection], pins: Pins, reported: set[str]
) -> Catalogue:
    """Merge what every backend offers now, in configuration order: deterministic lists, a stable winner."""
    catalogue = Catalogue()
    clashes: dict[tuple[str, str], list[str]] = {}
    for backend in backends:
        connection = connections.get(backend.name)
        if connection is None:
            continue
        known = pins.known(backend.name)  # before this listing: its first one pins every tool
        for kind in KINDS:
            for original in connection.items[kind]:
                public_key, public = publish(backend, kind, original)
                if kind == "tools" and (why := pinned(pins, reported, backend, original, known)) is not None:
                    catalogue.quarantined[public_key] = why
                    continue
                if public_key in catalogue.items[kind]:
                    owner = catalogue.items[kind][public_key].owner.backend.name
                    clashes.setdefault((owner, backend.name), []).append(f"{KIND_NAMES[kind]} {public_key!r}")
                    continue
                mirrored = x_mcp_header_map(original.get("inputSchema")) if kind == "tools" else {}
                catalogue.items[kind][public_key] = Item(connection, original, public, mirrored)
        if not known and connection.state == "up" and backend.pinning != "off":
            pins.listed(backend.name)  # even a backend that offered no tool at first is pinned now
    catalogue.conflicts = [clash_line(first, second, names) for (first, second), names in clashes.items()]
    catalogue.templates = [
        (template, item)
        for item in catalogue.items["resourceTemplates"].values()
        if (template := parse_template(item.public.get("uriTemplate"))) is not None
    ]
    return catalogue


def publish(backend: Backend, kind: str, original: Message) -> tuple[str, Message]:
    """Tools and prompts get the backend's prefix, resource URIs and templates its namespace (`basic+…`)."""
    if kind in ("tools", "prompts"):
        public_name = backend.public_name(str(original.get("name")))
        return public_name, {**original, "name": public_name}
    key = "uri" if kind == "resources" else "uriTemplate"
    public_uri = backend.public_uri(str(original.get(key)))
    return public_uri, {**original, key: public_uri}


def pinned(pins: Pins, reported: set[str], backend: Backend, tool: Message, known: bool) -> str | None:
    """None when the tool may be offered; else why it is quarantined. Each violation is logged once (`reported`)."""
    if backend.pinning == "off":
        return None
    trust_new = backend.new_tools == "trust"
    key = f"{backend.name}/{tool.get('name')}"
    if known and trust_new and key not in pins.pins:
        log.warning("new tool pinned on first sight (newTools: trust)", server=backend.name, tool=tool.get("name"))
    changed = pins.check(backend.name, tool, known=known, trust_new=trust_new)
    if not changed:
        return None
    new = changed == [NEW]
    if key + repr(changed) not in reported:
        reported.add(key + repr(changed))
        pin_violations.add(1, {"server": backend.name})
        renamed = pins.same_as(backend.name, tool) if new else []
        log.warning(
            "new tool on a pinned server" if new else "tool definition changed since it was pinned",
            server=backend.name,
            tool=tool.get("name"),
            changed=changed,
            **({"same_definition_as": renamed} if renamed else {}),
            action="quarantined" if backend.pinning == "block" else "allowed (pinning: warn)",
            approve=f"05-mcp-proxy/server.py --approve {key}",
        )
    if backend.pinning == "warn":
        return None
    what = f"changed this tool's {', '.join(changed)} since it was approved"
    if new:
        what = "offers this tool, which it did not offer when its tools were pinned"
    return (
        f"the server {backend.name!r} {what}; "
        f"it is quarantined until someone runs: 05-mcp-proxy/server.py --approve {key}"
    )


def parse_template(value: Any) -> UriTemplate | None:
    try:
        return UriTemplate.parse(value) if isinstance(value, str) else None
    except InvalidUriTemplate:
        return None


def publish_links(connection: Connection, blocks: Any) -> None:
    """Resource links and embedded resources in an answer, under the URIs clients read them by.

    Only a URI the backend offers itself (listed, or described by one of its
    templates) gets its namespace: a link to anywhere else (`https://…`) is
    not the proxy's to read, and stays as the backend wrote it.
    """
    backend = connection.backend
    if not isinstance(blocks, list) or not backend.public_uri(""):  # a transparent backend's URIs are its own
        return
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        target = block if kind == "resource_link" else block.get("resource") if kind == "resource" else None
        if isinstance(target, dict) and isinstance(uri := target.get("uri"), str) and offers(connection, uri):
            target["uri"] = backend.public_uri(uri)


def offers(connection: Connection, uri: str) -> bool:
    """Whether the backend lists this resource, or one of its templates describes it."""
    if any(resource.get("uri") == uri for resource in connection.items["resources"]):
        return True
    templates = (parse_template(t.get("uriTemplate")) for t in connection.items["resourceTemplates"])
    return any(template is not None and template.match(uri) is not None for template in templates)
