"""What the workshop modules share; this package's `__all__` is everything a module may import from it.

Importing it starts nothing and configures nothing: each module's `main()`
calls `configure_logging()` and `serve()` itself. What each file offers, and
to which modules, is in shared/README.md.
"""

from shared.config import ServerConfig, build_parser, config_from_args, parse_config
from shared.context import Secret, bearer_token, caller_token
from shared.finite import non_finite
from shared.logs import configure_logging, log_requests
from shared.mcp_server import project_version, refuse_unknown_tools
from shared.serve import (
    MCP_PATH,
    bound_address,
    build_http_app,
    cors,
    listen,
    mcp_url,
    run_uvicorn,
    serve,
    transport_security,
)
from shared.telemetry import (
    ERROR_TYPE,
    GEN_AI_OPERATION_NAME,
    GEN_AI_TOOL_NAME,
    INSTRUMENTATION_NAME,
    MCP_METHOD_NAME,
    MCP_PROTOCOL_VERSION,
    NETWORK_TRANSPORT,
    RecentSpans,
    TelemetryMiddleware,
    metrics_endpoint,
    setup_telemetry,
    transport_attributes,
)
from shared.token_storage import MemoryTokenStorage
from shared.tools import add_numbers, echo_message
from shared.upstream import (
    EMBEDDED_ANYTHING,
    EMBEDDED_URL,
    Caller,
    Rejected,
    UpstreamReply,
    Verifier,
    build_upstream_app,
    send_message,
)

__all__ = [
    "EMBEDDED_ANYTHING",
    "EMBEDDED_URL",
    "ERROR_TYPE",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_TOOL_NAME",
    "INSTRUMENTATION_NAME",
    "MCP_METHOD_NAME",
    "MCP_PATH",
    "MCP_PROTOCOL_VERSION",
    "NETWORK_TRANSPORT",
    "Caller",
    "MemoryTokenStorage",
    "RecentSpans",
    "Rejected",
    "Secret",
    "ServerConfig",
    "TelemetryMiddleware",
    "UpstreamReply",
    "Verifier",
    "add_numbers",
    "bearer_token",
    "bound_address",
    "build_http_app",
    "build_parser",
    "build_upstream_app",
    "caller_token",
    "config_from_args",
    "configure_logging",
    "cors",
    "echo_message",
    "listen",
    "log_requests",
    "mcp_url",
    "metrics_endpoint",
    "non_finite",
    "parse_config",
    "project_version",
    "refuse_unknown_tools",
    "run_uvicorn",
    "send_message",
    "serve",
    "setup_telemetry",
    "transport_attributes",
    "transport_security",
]
