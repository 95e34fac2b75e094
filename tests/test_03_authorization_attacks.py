"""03-oauth-mcp: what an attacker sends the authorization server, on the wire, and what it must answer.

Each test sends the attack to a real authorization server on loopback, checks
that it was refused with the protocol's error, and then checks that the
server still serves an honest client.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.harness import ServerProcess, load_sibling, serve_app

FOLDER = "03-oauth-mcp"
DEMO_PASSWORD = "demo-password-for-tests"
MACHINE_SECRET = "machine-secret-for-tests"
CALLBACK = "http://127.0.0.1:3000/callback"
ENV = {"DEMO_PASSWORD": DEMO_PASSWORD, "MACHINE_CLIENT_SECRET": MACHINE_SECRET}
MANY = ("--registrations-per-minute", "10000")  # these tests register a lot; the limit has its own test


def start_authorization_server(*args: str) -> ServerProcess:
    return ServerProcess(FOLDER, *MANY, *args, env=ENV, script="authorization_server.py")


@pytest.fixture(scope="module")
def auth() -> Iterator[ServerProcess]:
    with start_authorization_server() as server:
        yield server


@pytest.fixture
def fresh_auth() -> Iterator[ServerProcess]:
    """A server of its own, for a test that leaves throttles or many pending requests behind."""
    with start_authorization_server() as server:
        yield server


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def register(auth: ServerProcess, **metadata: object) -> httpx2.Response:
    body = {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none", "client_name": "test app", **metadata}
    return httpx2.post(f"{auth.url}/register", json=body)


def client_id(auth: ServerProcess, **metadata: object) -> str:
    response = register(auth, **metadata)
    assert response.status_code == 201, response.text
    return str(response.json()["client_id"])


def authorize_query(client: str, challenge: str, **overrides: str) -> list[tuple[str, str]]:
    params = {
        "response_type": "code",
        "client_id": client,
        "redirect_uri": CALLBACK,
        "state": "state-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **overrides,
    }
    return [(k, v) for k, v in params.items() if v]


def authorize_url(auth: ServerProcess, items: list[tuple[str, str]]) -> str:
    return f"{auth.url}/authorize?{urlencode(items)}"


def page_fields(page: httpx2.Response) -> dict[str, str]:
    assert page.status_code == 200, page.text
    return dict(re.findall(r'name="(request_id|csrf)" value="([^"]+)"', page.text))


def answer(auth: ServerProcess, fields: dict[str, str], password: str = DEMO_PASSWORD) -> httpx2.Response:
    form = {**fields, "username": "demo", "password": password, "decision": "allow"}
    return httpx2.post(f"{auth.url}/authorize", data=form)


def code_from(response: httpx2.Response) -> str:
    assert response.status_code == 302, response.text
    return parse_qs(urlsplit(response.headers["location"]).query)["code"][0]


def honest_sign_in(auth: ServerProcess, address: str = "127.0.0.1") -> dict[str, object]:
    """Another client, start to finish: registration, consent, code, token. The server still serves it."""
    with httpx2.Client(transport=httpx2.HTTPTransport(local_address=address), timeout=10) as http:
        registered = http.post(
            f"{auth.url}/register", json={"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}
        )
        assert registered.status_code == 201, registered.text
        client = str(registered.json()["client_id"])
        verifier, challenge = pkce()
        fields = page_fields(http.get(authorize_url(auth, authorize_query(client, challenge))))
        signed_in = http.post(
            f"{auth.url}/authorize", data={**fields, "username": "demo", "password": DEMO_PASSWORD, "decision": "allow"}
        )
        form = {
            "grant_type": "authorization_code",
            "code": code_from(signed_in),
            "redirect_uri": CALLBACK,
            "client_id": client,
            "code_verifier": verifier,
        }
        token = http.post(f"{auth.url}/token", data=form)
    assert token.status_code == 200, token.text
    return dict(token.json())


def rss_bytes(server: ServerProcess) -> int:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match
    return int(match[1]) * 1024


# --- class 3: client-supplied values in security headers --------------------------------------

NOT_URLS = [
    "http://127.0.0.1:3000;frame-ancestors http:/callback",  # the CSP injection
    "https://app.example;frame-ancestors *;/cb",
    "http://127.0.0.1:3000/call back",
    'http://127.0.0.1:3000/"callback',
    "http://127.0.0.1:3000/callback\r\nX-Injected: 1",
    "http://127.0.0.1:3000,evil.example/cb",
    "https://例え.jp/callback",  # an internationalised host must come in its xn-- form
    "http://127.0.0.1:notaport/cb",
]


@pytest.mark.parametrize("uri", NOT_URLS)
def test_a_redirect_uri_that_is_not_a_plain_url_is_refused_at_registration(auth: ServerProcess, uri: str) -> None:
    response = register(auth, redirect_uris=[uri])
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_redirect_uri"
    consent_policy_is_built_from_the_checked_origin(auth)
    assert honest_sign_in(auth)["access_token"]


def consent_policy_is_built_from_the_checked_origin(auth: ServerProcess) -> None:
    uri = "http://127.0.0.1:3000/callback;frame-ancestors=http:"  # `;` in a path is legal and stays there
    client = client_id(auth, redirect_uris=[uri])
    page = httpx2.get(authorize_url(auth, authorize_query(client, pkce()[1], redirect_uri=uri)))
    assert page.status_code == 200, page.text
    policy = page.headers["content-security-policy"]
    assert "form-action 'self' http://127.0.0.1:3000;" in policy
    assert re.findall(r"frame-ancestors [^;]*", policy) == ["frame-ancestors 'none'"]
    idn = client_id(auth, redirect_uris=["https://xn--r8jz45g.jp/callback"])
    page = httpx2.get(
        authorize_url(auth, authorize_query(idn, pkce()[1], redirect_uri="https://xn--r8jz45g.jp/callback"))
    )
    assert page.status_code == 200 and "xn--r8jz45g.jp" in page.text


@pytest.mark.anyio
async def test_a_client_metadata_document_with_a_header_breaking_redirect_uri_is_refused() -> None:
    async def document(_request: object) -> JSONResponse:
        return JSONResponse(
            {
                "client_id": url,
                "client_name": "doc app",
                "redirect_uris": [NOT_URLS[0]],
                "token_endpoint_auth_method": "none",
            }
        )

    async with serve_app(Starlette(routes=[Route("/client.json", document)])) as base:
        url = f"{base}/client.json"
        with start_authorization_server("--allow-loopback-client-metadata") as auth:
            query = authorize_query(url, pkce()[1], redirect_uri=NOT_URLS[0])
            async with httpx2.AsyncClient() as http:
                response = await http.get(authorize_url(auth, query))
            assert response.status_code == 400, response.text
            assert response.json()["error"] == "invalid_client"
            assert "content-security-policy" not in response.headers
            assert await anyio.to_thread.run_sync(honest_sign_in, auth)


# --- class 6: least privilege -------------------------------------------------------------------


def test_a_client_that_asks_for_no_scope_gets_the_base_scope_only(auth: ServerProcess) -> None:
    registered = register(auth)
    assert registered.status_code == 201 and registered.json()["scope"] == "mcp:read"
    client = str(registered.json()["client_id"])
    verifier, challenge = pkce()
    page = httpx2.get(authorize_url(auth, authorize_query(client, challenge)))  # no scope asked
    assert "<li>mcp:admin</li>" not in page.text
    code = code_from(answer(auth, page_fields(page)))
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "client_id": client,
        "code_verifier": verifier,
    }
    token = httpx2.post(f"{auth.url}/token", data=form)
    assert token.status_code == 200 and token.json()["scope"] == "mcp:read"
    unknown = register(auth, scope="mcp:read root")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_client_metadata"
    assert honest_sign_in(auth)["scope"] == "mcp:read"


# --- class 8: repeated parameters ---------------------------------------------------------------


@pytest.mark.parametrize("repeated", ["redirect_uri", "code_challenge", "state", "client_id"])
def test_an_authorization_request_with_a_repeated_parameter_is_refused(auth: ServerProcess, repeated: str) -> None:
    client = client_id(auth, redirect_uris=[CALLBACK, "http://127.0.0.1:3001/callback"])
    items = authorize_query(client, pkce()[1])
    value = {"redirect_uri": "http://127.0.0.1:3001/callback", "code_challenge": pkce()[1]}.get(repeated, "other")
    items.append((repeated, value))
    response = httpx2.get(authorize_url(auth, items))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request" and "location" not in response.headers
    assert honest_sign_in(auth)["access_token"]


def test_a_token_request_with_a_repeated_parameter_is_refused(auth: ServerProcess) -> None:
    client = client_id(auth)
    verifier, challenge = pkce()
    code = code_from(answer(auth, page_fields(httpx2.get(authorize_url(auth, authorize_query(client, challenge))))))
    items = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", CALLBACK),
        ("client_id", client),
        ("code_verifier", "x" * 43),
        ("code_verifier", verifier),
    ]
    headers = {"content-type": "application/x-www-form-urlencoded"}
    response = httpx2.post(f"{auth.url}/token", content=urlencode(items), headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert honest_sign_in(auth)["access_token"]


# --- class 1: memory spent before anything is checked -------------------------------------------

HUNDRED_MB = 100 * 1024 * 1024


def raw_registration(auth: ServerProcess, size: int) -> bytes:
    """Announce a `size`-byte registration and wait for the server's first answer before sending it."""
    host, port = urlsplit(auth.url).hostname, urlsplit(auth.url).port
    assert host and port
    prefix = b'{"redirect_uris":["' + CALLBACK.encode() + b'"],"client_name":"'
    suffix = b'"}'
    head = (
        f"POST /register HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head)
        first = sock.recv(65536)
        if first.startswith(b"HTTP/1.1 100"):  # the server wants it all: send it
            filler = b"a" * (1024 * 1024)
            sock.sendall(prefix)
            left = size - len(prefix) - len(suffix)
            while left > 0:
                left -= sock.send(filler[: min(left, len(filler))])
            sock.sendall(suffix)
            first = sock.recv(65536)
        return first


def test_a_huge_registration_is_refused_before_it_is_read(auth: ServerProcess) -> None:
    before = rss_bytes(auth)
    answer_line = raw_registration(auth, HUNDRED_MB).split(b"\r\n", 1)[0]
    assert answer_line == b"HTTP/1.1 413 Request Entity Too Large", answer_line
    chunks = (b"a" * 65536 for _ in range(HUNDRED_MB // 65536))  # the same without a length: chunked
    try:
        response = httpx2.post(f"{auth.url}/register", content=chunks)
        assert response.status_code == 413
    except httpx2.TransportError:
        pass  # the server answered 413 and hung up while the body was still coming: also a refusal
    assert rss_bytes(auth) - before < 20 * 1024 * 1024
    assert honest_sign_in(auth)["access_token"]


# --- class 7: bad input is a 4xx with the protocol's error, never a 500 -------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic " + base64.b64encode("workshop-machine:sécret".encode()).decode(),  # non-ASCII secret
        "Basic " + base64.b64encode("ñ:ñ".encode("latin-1")).decode(),  # not UTF-8 once decoded
        "Basic ééé",  # not base64
    ],
    ids=["non-ascii-secret", "latin-1", "not-base64"],
)
def test_bad_basic_credentials_are_invalid_client(auth: ServerProcess, authorization: str) -> None:
    response = httpx2.post(
        f"{auth.url}/token",
        content="grant_type=client_credentials",
        headers={
            b"authorization": authorization.encode("latin-1"),
            b"content-type": b"application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert honest_sign_in(auth)["access_token"]


@pytest.mark.parametrize("field", ["csrf", "password"])
def test_a_non_ascii_consent_field_is_refused(auth: ServerProcess, field: str) -> None:
    client = client_id(auth)
    fields = page_fields(httpx2.get(authorize_url(auth, authorize_query(client, pkce()[1]))))
    form = {**fields, "username": "demo", "password": DEMO_PASSWORD, "decision": "allow", field: "pässwörd"}
    response = httpx2.post(f"{auth.url}/authorize", data=form)
    assert response.status_code == (403 if field == "csrf" else 401), response.text
    assert "location" not in response.headers
    assert honest_sign_in(auth)["access_token"]


@pytest.mark.parametrize("grant_types", [5, [["x"]]], ids=["number", "nested-list"])
def test_malformed_grant_types_are_invalid_client_metadata(auth: ServerProcess, grant_types: object) -> None:
    response = register(auth, grant_types=grant_types)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client_metadata"
    assert honest_sign_in(auth)["access_token"]


@pytest.mark.parametrize("client", ["https://%ff/client.json", "http://[::1/client.json"])
def test_a_client_id_url_that_does_not_parse_is_invalid_client(auth: ServerProcess, client: str) -> None:
    response = httpx2.get(
        f"{auth.url}/authorize?{urlencode(authorize_query('x', pkce()[1]))}".replace(
            "client_id=x", f"client_id={client}"
        )
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client" and "location" not in response.headers
    token = httpx2.post(
        f"{auth.url}/token", data={"grant_type": "authorization_code", "code": "c", "client_id": client}
    )
    assert token.status_code == 400 and token.json()["error"] == "invalid_client"
    assert honest_sign_in(auth)["access_token"]


# --- class 5: abuse limits ----------------------------------------------------------------------


def test_wrong_passwords_are_throttled_and_even_the_right_one_then_waits(fresh_auth: ServerProcess) -> None:
    client = client_id(fresh_auth)
    fields = page_fields(httpx2.get(authorize_url(fresh_auth, authorize_query(client, pkce()[1]))))
    statuses = [answer(fresh_auth, fields, password=f"guess-{n}").status_code for n in range(20)]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    right = answer(fresh_auth, fields)
    assert right.status_code == 429 and "location" not in right.headers
    assert "Too many wrong passwords" in right.text
    # This address waits out the window too, but a person elsewhere (127.0.0.2) signs in at once.
    assert honest_sign_in(fresh_auth, address="127.0.0.2")["access_token"]


def test_pending_sign_ins_are_bounded_in_size_and_number(fresh_auth: ServerProcess) -> None:
    client = client_id(fresh_auth)
    huge = httpx2.get(authorize_url(fresh_auth, authorize_query(client, pkce()[1], state="s" * 60_000)))
    assert huge.status_code == 414 and huge.json()["error"] == "invalid_request"
    with httpx2.Client() as http:
        first = page_fields(http.get(authorize_url(fresh_auth, authorize_query(client, pkce()[1]))))
        before = rss_bytes(fresh_auth)
        for _ in range(1000):
            assert (
                http.get(authorize_url(fresh_auth, authorize_query(client, pkce()[1], state="s" * 3000))).status_code
                == 200
            )
    assert rss_bytes(fresh_auth) - before < 20 * 1024 * 1024
    expired = answer(fresh_auth, first)  # the oldest page went to make room
    assert expired.status_code == 400 and "expired" in expired.text
    assert honest_sign_in(fresh_auth)["access_token"]


def test_the_throttles_forget_keys_whose_events_aged_out() -> None:
    """A script that claims a new client_id at every guess must not grow the throttle's table without end."""
    checks = load_sibling(FOLDER, "identity_provider.checks")
    limit = checks.RateLimit(limit=10, window=0.05)
    for n in range(5000):
        limit.add(f"client-{n}")
    time.sleep(0.1)  # every key above has aged out
    for n in range(5000, 10_000):
        limit.add(f"client-{n}")
    assert len(limit.events) <= 5000 + 1024
    assert not limit.exceeded("client-1") and limit.count("client-9999") == 1
