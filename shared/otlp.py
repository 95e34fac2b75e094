"""The OTLP/HTTP span exporter, with the span encoding done in place: the same bytes for less CPU.

Why this file exists: `opentelemetry-exporter-otlp-proto-http` builds each
protobuf message by passing its parts to the constructor (`KeyValue(key=…,
value=AnyValue(…))`). With the `upb` protobuf backend a message passed like
that is copied into its parent by serialising and parsing it again, so every
attribute of a span is encoded several times over. Measured against the
library's exporter, side by side, in bench/README.md ("Hand-written code").

Everything else (endpoint, headers, TLS, compression, timeout, retries) stays
the library's: only the encoding is ours. `tests/test_04_observability.py`
checks that it produces exactly the message the library would, and that the
exporter's private parts used below are still there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, SpanFlags, Status
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope as SdkScope
from opentelemetry.trace import SpanContext
from opentelemetry.util.types import Attributes

_logger = logging.getLogger(__name__)


class KeyValues(Protocol):
    """A repeated `KeyValue` field of a protobuf message: what `add_attributes` fills."""

    def add(self) -> KeyValue: ...
    def __delitem__(self, index: int) -> None: ...


class InPlaceOTLPSpanExporter(OTLPSpanExporter):
    """`OTLPSpanExporter`, encoding with `encode_spans_in_place`; sending is left to the library's HTTP client."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # The library's own export(), minus its optional self-metrics and its request size limit (a batch of
        # MCP spans is far below it), with our encoder: it has no hook for swapping only that step. `_shutdown`
        # and `_client` are the library's private parts; a test names them, so a release that moves them fails.
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            body = encode_spans_in_place(spans).SerializePartialToString()
        except Exception:
            _logger.exception("could not encode %d spans for OTLP", len(spans))
            return SpanExportResult.FAILURE
        sent = self._client.export(body)
        return SpanExportResult.SUCCESS if sent.success else SpanExportResult.FAILURE


def encode_spans_in_place(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The OTLP request for `spans`, grouped by resource, then by instrumentation scope, as the library does."""
    request = ExportTraceServiceRequest()
    # Keyed by identity: every span of a provider shares its one Resource, and hashing a Resource
    # serialises its attributes to JSON each time.
    groups: dict[tuple[int, int], ScopeSpans] = {}
    resources: dict[int, ResourceSpans] = {}
    for span in spans:
        scope = span.instrumentation_scope or None
        key = (id(span.resource), id(scope))
        scope_spans = groups.get(key)
        if scope_spans is None:
            resource_spans = resources.get(key[0])
            if resource_spans is None:
                resource_spans = resources[key[0]] = request.resource_spans.add()
                resource_spans.resource.SetInParent()  # present even when empty, as the library sends it
                add_attributes(resource_spans.resource.attributes, span.resource.attributes)
                resource_spans.schema_url = span.resource.schema_url
            scope_spans = groups[key] = resource_spans.scope_spans.add()
            fill_scope(scope_spans, scope)
        fill_span(scope_spans.spans.add(), span)
    return request


def fill_scope(out: ScopeSpans, scope: SdkScope | None) -> None:
    out.scope.SetInParent()
    if scope is not None:
        out.scope.name = scope.name
        if scope.version:
            out.scope.version = scope.version
        add_attributes(out.scope.attributes, scope.attributes)
        if scope.schema_url:
            out.schema_url = scope.schema_url


def fill_span(out: Span, span: ReadableSpan) -> None:
    context = span.get_span_context()
    assert context is not None  # a finished SDK span always has one
    out.trace_id = context.trace_id.to_bytes(16, "big")
    out.span_id = context.span_id.to_bytes(8, "big")
    if context.trace_state is not None and (state := ",".join(f"{k}={v}" for k, v in context.trace_state.items())):
        out.trace_state = state
    if span.parent is not None:
        out.parent_span_id = span.parent.span_id.to_bytes(8, "big")
    out.name = span.name
    # The SDK's SpanKind counts from 0, OTLP's from 1 (its 0 means "unspecified").
    out.kind = Span.SpanKind.ValueType(span.kind.value + 1)
    out.start_time_unix_nano = span.start_time or 0
    out.end_time_unix_nano = span.end_time or 0
    add_attributes(out.attributes, span.attributes)
    for event in span.events:
        encoded = out.events.add()
        encoded.name = event.name
        encoded.time_unix_nano = event.timestamp
        add_attributes(encoded.attributes, event.attributes)
        encoded.dropped_attributes_count = event.dropped_attributes
    for link in span.links:
        encoded_link = out.links.add()
        encoded_link.trace_id = link.context.trace_id.to_bytes(16, "big")
        encoded_link.span_id = link.context.span_id.to_bytes(8, "big")
        add_attributes(encoded_link.attributes, link.attributes)
        encoded_link.dropped_attributes_count = link.dropped_attributes
        encoded_link.flags = span_flags(link.context)
    out.status.SetInParent()
    out.status.code = Status.StatusCode.ValueType(span.status.status_code.value)
    if span.status.description:
        out.status.message = span.status.description
    out.dropped_attributes_count = span.dropped_attributes
    out.dropped_events_count = span.dropped_events
    out.dropped_links_count = span.dropped_links
    out.flags = span_flags(span.parent)


def span_flags(parent: SpanContext | None) -> int:
    flags: int = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
    if parent is not None and parent.is_remote:
        flags |= SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    return flags


def add_attributes(out: KeyValues, attributes: Attributes) -> None:
    for key, value in (attributes or {}).items():
        pair = out.add()
        pair.key = key
        if type(value) is str:  # nearly every attribute of an MCP span: the short way
            pair.value.string_value = value
            continue
        try:
            set_value(pair.value, value)
        except TypeError:
            _logger.warning("attribute %s has a type OTLP cannot carry: %s", key, type(value).__name__)
            del out[-1]


def set_value(out: AnyValue, value: Any) -> None:
    # The order of the checks matters as it does in the library: a bool is an int, a str is a Sequence.
    if value is None:
        return
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, Sequence):
        values = out.array_value.values
        for item in value:
            set_value(values.add(), item)
    elif isinstance(value, Mapping):
        pairs = out.kvlist_value.values
        for key, item in value.items():
            pair = pairs.add()
            pair.key = str(key)
            set_value(pair.value, item)
    else:
        raise TypeError(type(value).__name__)
