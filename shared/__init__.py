"""What every workshop module shares: the CLI, logging, request context and the runner.

Importing this package starts nothing and configures nothing; each module's
`main()` calls `configure_logging()` and `serve()` itself.
"""

from shared.config import Address, ServerConfig, parse_config
from shared.context import Secret, caller_token, request_id
from shared.logs import configure_logging
from shared.serve import build_http_app, serve

__all__ = [
    "Address",
    "Secret",
    "ServerConfig",
    "build_http_app",
    "caller_token",
    "configure_logging",
    "parse_config",
    "request_id",
    "serve",
]
