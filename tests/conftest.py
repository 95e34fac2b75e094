from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import CAPTURED_LOGS, SECRETS_USED


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True, scope="session")
def no_secret_in_any_log() -> Iterator[None]:
    """After the whole suite: no stderr line any server wrote contains a credential a test used."""
    yield
    leaks = [line for lines in CAPTURED_LOGS for line in lines for secret in SECRETS_USED if secret and secret in line]
    assert not leaks, f"{len(leaks)} log line(s) carry a raw credential, e.g. {leaks[0][:200]!r}"
