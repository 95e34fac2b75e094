"""03-oauth-mcp: the authorization server and the protected MCP server, with the SDK's own OAuth clients."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
import uvicorn
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from shared import MemoryTokenStorage, Secret
from shared.upstream import EMBEDDED_URL
from tests.harness import (
    CAPTURED_LOGS,
    CHROMIUM,
    CHROMIUM_ARGS,
    HTTP_TIMEOUT,
    INITIALIZE,
    REPO,
    ServerProcess,
    free_port,
    http_client,
    load_server,
    load_sibling,
    node_env,
    node_tool,
    redis_server,
    remember_secret,
    run_node_tool,
    run_server,
    serve_app,
    server_env,
)
from tests.test_02_token_passthrough import Recorder

FOLDER = "03-oauth-mcp"
server = load_server(FOLDER)
DEMO_PASSWORD = "demo-password-for-tests"
MACHINE_SECRET = "machine-secret-for-tests"
CALLBACK = "http://127.0.0.1:3000/callback"
MCP_SERVER_SECRET = "mcp-server-secret-for-tests"

pytestmark = pytest.mark.anyio


@dataclass
class Stack:
    issuer: str
    resource: str
    other_port: int  # a second MCP server the same issuer knows, started by the tests that need it

    @property
    def other_resource(self) -> str:
        return f"http://127.0.0.1:{self.other_port}/mcp"


ENV = {
    "DEMO_PASSWORD": DEMO_PASSWORD,
    "MACHINE_CLIENT_SECRET": MACHINE_SECRET,
    "MCP_SERVER_CLIENT_SECRET": MCP_SERVER_SECRET,
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The authorization server and the MCP server, each a real process, each knowing the other's URL."""
    port, other_port = free_port(), free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    resources = ("--resource", resource, "--resource", f"http://127.0.0.1:{other_port}/mcp")
    many = ("--registrations-per-minute", "10000")  # the tests register a client each; the limit has its own test
    with ServerProcess(FOLDER, *resources, *many, env=ENV, script="authorization_server.py") as auth:
        mcp_server = ServerProcess(FOLDER, "--addr", f"127.0.0.1:{port}", "--issuer", auth.url, env=ENV)
        with mcp_server:
            assert mcp_server.url == resource
            yield Stack(auth.url, resource, other_port)


# --- helpers: what a browser and a client would do ------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def register(stack: Stack, **metadata: Any) -> dict[str, Any]:
    body = {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none", "client_name": "test app", **metadata}
    response = httpx2.post(f"{stack.issuer}/register", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def sign_in(authorize_url: str, password: str = DEMO_PASSWORD, decision: str = "allow") -> httpx2.Response:
    """Open the consent page and answer it, as a person in a browser would."""
    page = httpx2.get(authorize_url)
    assert page.status_code == 200, page.text
    fields = dict(re.findall(r'name="(request_id|csrf)" value="([^"]+)"', page.text))
    answer = {**fields, "username": "demo", "password": password, "decision": decision}
    return httpx2.post(authorize_url.split("?")[0], data=answer)


def authorize_url(stack: Stack, client_id: str, challenge: str, **overrides: str) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": CALLBACK,
        "state": "state-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": stack.resource,
        "scope": "mcp:read",
        **overrides,
    }
    return str(httpx2.URL(f"{stack.issuer}/authorize", params={k: v for k, v in params.items() if v}))


def redirect_params(response: httpx2.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(CALLBACK)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def code_flow(stack: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole authorization-code flow by hand; returns the client and the token response."""
    client = register(stack)
    verifier, challenge = pkce()
    params = redirect_params(sign_in(authorize_url(stack, client["client_id"], challenge)))
    token = httpx2.post(
        f"{stack.issuer}/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": CALLBACK,
            "client_id": client["client_id"],
            "code_verifier": verifier,
            "resource": stack.resource,
        },
    )
    assert token.status_code == 200, token.text
    tokens = dict(token.json())
    remember_secret(tokens["access_token"])
    remember_secret(tokens["refresh_token"])
    return client, tokens


# --- the authorization server ---------------------------------------------------------------


def test_metadata_is_exact(stack: Stack) -> None:
    metadata = httpx2.get(f"{stack.issuer}/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == stack.issuer  # byte for byte: no trailing slash
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["token_endpoint"] == f"{stack.issuer}/token"


def test_code_flow_issues_a_jwt_for_the_resource(stack: Stack) -> None:
    client, tokens = code_flow(stack)
    keys = KeySet.import_key_set(httpx2.get(f"{stack.issuer}/jwks").json())
    decoded = jwt.decode(tokens["access_token"], keys, algorithms=["RS256"])
    assert decoded.header["typ"] == "at+jwt"
    assert {k: decoded.claims[k] for k in ("iss", "sub", "aud", "client_id", "scope")} == {
        "iss": stack.issuer,
        "sub": "demo",
        "aud": stack.resource,
        "client_id": client["client_id"],
        "scope": "mcp:read",
    }


def test_authorization_response_carries_iss_and_state(stack: Stack) -> None:
    client = register(stack)
    _, challenge = pkce()
    allowed = redirect_params(sign_in(authorize_url(stack, client["client_id"], challenge)))
    denied = redirect_params(sign_in(authorize_url(stack, client["client_id"], challenge), decision="deny"))
    assert (allowed["iss"], allowed["state"]) == (stack.issuer, "state-123")
    assert (denied["error"], denied["iss"], denied["state"]) == ("access_denied", stack.issuer, "state-123")


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"code_challenge": "", "code_challenge_method": ""}, "invalid_request"),  # no PKCE at all
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"resource": "http://127.0.0.1:1/mcp"}, "invalid_target"),
    ],
    ids=["no-pkce", "plain-pkce", "unknown-resource"],
)
def test_bad_authorization_requests_get_no_code(stack: Stack, overrides: dict[str, str], error: str) -> None:
    client = register(stack)
    _, challenge = pkce()
    params = redirect_params(httpx2.get(authorize_url(stack, client["client_id"], challenge, **overrides)))
    assert params["error"] == error and "code" not in params and params["iss"] == stack.issuer


def test_unregistered_redirect_uri_is_never_followed(stack: Stack) -> None:
    client = register(stack)
    _, challenge = pkce()
    response = httpx2.get(authorize_url(stack, client["client_id"], challenge, redirect_uri="http://evil.example/cb"))
    assert response.status_code == 400 and "location" not in response.headers


@pytest.mark.parametrize("uri", ["http://evil.example/cb", "http://localhost.evil.example/cb", "javascript:alert(1)"])
def test_registration_accepts_only_loopback_or_https_redirects(stack: Stack, uri: str) -> None:
    response = httpx2.post(
        f"{stack.issuer}/register", json={"redirect_uris": [uri], "token_endpoint_auth_method": "none"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_redirect_uri"


def test_consent_page_cannot_be_framed_or_forged(stack: Stack) -> None:
    client = register(stack, client_name="Gadget <b>Inspector</b>")
    _, challenge = pkce()
    url = authorize_url(stack, client["client_id"], challenge)
    page = httpx2.get(url)
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert "Gadget &lt;b&gt;Inspector&lt;/b&gt;" in page.text and "127.0.0.1:3000" in page.text  # name, redirect host
    request_id = re.search(r'name="request_id" value="([^"]+)"', page.text)
    assert request_id
    forged = {"request_id": request_id[1], "csrf": "guess", "username": "demo", "password": DEMO_PASSWORD}
    assert httpx2.post(f"{stack.issuer}/authorize", data={**forged, "decision": "allow"}).status_code == 403


def test_wrong_password_gets_the_page_again_not_a_code(stack: Stack) -> None:
    client = register(stack)
    _, challenge = pkce()
    response = sign_in(authorize_url(stack, client["client_id"], challenge), password="wrong")
    assert response.status_code == 401 and "Wrong username or password." in response.text


def test_code_is_single_use_and_a_second_attempt_revokes_the_first(stack: Stack) -> None:
    client = register(stack)
    verifier, challenge = pkce()
    code = redirect_params(sign_in(authorize_url(stack, client["client_id"], challenge)))["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "client_id": client["client_id"],
        "code_verifier": verifier,
    }
    first = httpx2.post(f"{stack.issuer}/token", data=form)
    assert first.status_code == 200
    remember_secret(first.json()["access_token"])
    remember_secret(first.json()["refresh_token"])
    assert httpx2.post(f"{stack.issuer}/token", data=form).json()["error"] == "invalid_grant"
    # The second attempt means the code leaked: what the first one obtained is revoked.
    assert introspect(stack, first.json()["access_token"]).json() == {"active": False}
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": first.json()["refresh_token"],
        "client_id": client["client_id"],
    }
    assert httpx2.post(f"{stack.issuer}/token", data=refresh).json()["error"] == "invalid_grant"


def test_wrong_verifier_is_refused(stack: Stack) -> None:
    client = register(stack)
    _, challenge = pkce()
    code = redirect_params(sign_in(authorize_url(stack, client["client_id"], challenge)))["code"]
    other_verifier, _ = pkce()
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "client_id": client["client_id"],
        "code_verifier": other_verifier,
    }
    assert httpx2.post(f"{stack.issuer}/token", data=form).json()["error"] == "invalid_grant"


def test_refresh_tokens_rotate_and_reuse_revokes_the_family(stack: Stack) -> None:
    client, tokens = code_flow(stack)

    def refresh(token: str) -> httpx2.Response:
        form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client["client_id"]}
        return httpx2.post(f"{stack.issuer}/token", data=form)

    rotated = refresh(tokens["refresh_token"])
    assert rotated.status_code == 200
    newer = remember_secret(rotated.json()["refresh_token"])
    remember_secret(rotated.json()["access_token"])
    assert newer != tokens["refresh_token"]
    stolen = refresh(tokens["refresh_token"])  # the old one again: someone else has it
    assert stolen.status_code == 400 and "reused" in stolen.json()["error_description"]
    assert refresh(newer).status_code == 400  # the legitimate holder's latest token is revoked too


def test_client_credentials(stack: Stack) -> None:
    response = httpx2.post(
        f"{stack.issuer}/token",
        data={"grant_type": "client_credentials", "resource": stack.resource},
        auth=("workshop-machine", MACHINE_SECRET),
    )
    assert response.status_code == 200
    token = remember_secret(response.json()["access_token"])
    assert "refresh_token" not in response.json()
    claims = jwt.decode(token, KeySet.import_key_set(httpx2.get(f"{stack.issuer}/jwks").json())).claims
    assert (claims["sub"], claims["aud"]) == ("workshop-machine", stack.resource)
    wrong = httpx2.post(
        f"{stack.issuer}/token", data={"grant_type": "client_credentials"}, auth=("workshop-machine", "x")
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


# --- the MCP server (resource server) -------------------------------------------------------


def post_mcp(stack: Stack, token: str | None) -> httpx2.Response:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return httpx2.post(stack.resource, content=INITIALIZE, headers=headers)


def test_no_token_gets_401_with_a_pointer_to_the_metadata(stack: Stack) -> None:
    response = post_mcp(stack, None)
    assert response.status_code == 401
    metadata_url = stack.resource.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    assert f'resource_metadata="{metadata_url}"' in response.headers["www-authenticate"]
    metadata = httpx2.get(metadata_url).json()
    assert (metadata["resource"], metadata["authorization_servers"]) == (stack.resource, [stack.issuer])


def mallorys_claims(stack: Stack) -> dict[str, Any]:
    """Every claim a token for this server needs, right: only the signature can give a forgery away."""
    return {
        "iss": stack.issuer,
        "sub": "mallory",
        "aud": stack.resource,
        "client_id": "x",
        "scope": "mcp:read",
        "exp": 4102444800,
    }


def forge(stack: Stack) -> str:
    """A token as an attacker would make one: every claim right, but signed with their own key."""
    real_kid = str(KeySet.import_key_set(httpx2.get(f"{stack.issuer}/jwks").json()).keys[0].kid)
    signing = RSAKey.generate_key(2048, parameters={"kid": real_kid})
    header = {"alg": "RS256", "typ": "at+jwt", "kid": real_kid}
    return remember_secret(jwt.encode(header, mallorys_claims(stack), signing))


def machine_token(stack: Stack, resource: str) -> str:
    form = {"grant_type": "client_credentials", "resource": resource}
    response = httpx2.post(f"{stack.issuer}/token", data=form, auth=("workshop-machine", MACHINE_SECRET))
    return remember_secret(response.json()["access_token"])


def test_tokens_not_issued_for_this_server_are_refused(stack: Stack) -> None:
    _, tokens = code_flow(stack)
    assert post_mcp(stack, tokens["access_token"]).status_code == 200
    assert post_mcp(stack, forge(stack)).status_code == 401  # signed by someone else's key
    assert post_mcp(stack, machine_token(stack, stack.resource)[:-2] + "xx").status_code == 401  # tampered
    assert post_mcp(stack, machine_token(stack, stack.other_resource)).status_code == 401  # issued for another server
    assert post_mcp(stack, "not-a-jwt").status_code == 401


class MemoryStorage(MemoryTokenStorage):
    """The SDK-shaped in-memory token storage of shared/, telling the log check which tokens to look for."""

    async def set_tokens(self, tokens: OAuthToken) -> None:
        remember_secret(tokens.access_token)
        if tokens.refresh_token:
            remember_secret(tokens.refresh_token)
        await super().set_tokens(tokens)


class HeadlessBrowser:
    """Stands in for the person: follows the authorization URL, signs in, consents, catches the redirect."""

    def __init__(self) -> None:
        self.result: AuthorizationCodeResult | None = None

    async def open(self, url: str) -> None:
        params = redirect_params(sign_in(url))
        self.result = AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


@contextlib.asynccontextmanager
async def signed_in(
    stack: Stack, storage: MemoryStorage | None = None, browser: HeadlessBrowser | None = None, mode: str = "auto"
) -> AsyncIterator[Client]:
    """An SDK `Client` whose OAuth provider registers, sends the (headless) browser to sign in, and gets tokens."""
    browser = browser or HeadlessBrowser()
    oauth = OAuthClientProvider(
        server_url=stack.resource,
        client_metadata=OAuthClientMetadata(client_name="workshop test", redirect_uris=[AnyUrl(CALLBACK)]),
        storage=storage or MemoryStorage(),
        redirect_handler=browser.open,
        callback_handler=browser.callback,
    )
    async with (
        httpx2.AsyncClient(auth=oauth, timeout=HTTP_TIMEOUT) as http,
        Client(streamable_http_client(stack.resource, http_client=http), mode=mode) as client,
    ):
        yield client


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sdk_client_signs_in_and_calls_who_am_i(stack: Stack, mode: str) -> None:
    async with signed_in(stack, mode=mode) as client:
        result = await client.call_tool("who_am_i", {})
    assert result.structured_content is not None
    assert {k: result.structured_content[k] for k in ("sub", "aud", "iss", "scope")} == {
        "sub": "demo",
        "aud": stack.resource,
        "iss": stack.issuer,
        "scope": "mcp:read",
    }


async def test_sdk_machine_client_uses_client_credentials(stack: Stack) -> None:
    oauth = ClientCredentialsOAuthProvider(
        server_url=stack.resource,
        storage=MemoryStorage(),
        client_id="workshop-machine",
        client_secret=MACHINE_SECRET,
        scope="mcp:read",
        issuer=stack.issuer,
    )
    async with (
        httpx2.AsyncClient(auth=oauth, timeout=HTTP_TIMEOUT) as http,
        Client(streamable_http_client(stack.resource, http_client=http)) as client,
    ):
        who = await client.call_tool("who_am_i", {})
        hint = await client.call_tool("show_auth_token", {})
    assert who.structured_content is not None and who.structured_content["sub"] == "workshop-machine"
    assert hint.content[0].text.startswith("Bearer token of ")  # type: ignore[union-attr]


# --- calling the upstream for the user: token exchange, not passthrough ---------------------


async def test_upstream_call_uses_an_exchanged_token(stack: Stack) -> None:
    storage = MemoryStorage()
    async with signed_in(stack, storage) as client:
        result = await client.call_tool("make_authenticated_request", {"message": "hello upstream"})
    reply = result.structured_content
    assert reply is not None, result
    assert storage.tokens is not None
    assert reply["caller_seen"] == "demo (client workshop-mcp-server, actor workshop-mcp-server)"
    assert reply["credential_seen"] != Secret(storage.tokens.access_token).fingerprint()
    assert (reply["mode"], reply["message"]) == ("token-exchange", "hello upstream")


async def test_callers_token_never_leaves_the_mcp_server(stack: Stack) -> None:
    recorder = Recorder(server.build_upstream_app(server.upstream_verifier(stack.issuer, EMBEDDED_URL)))
    async with serve_app(recorder) as upstream:
        other = ServerProcess(
            FOLDER,
            "--addr",
            f"127.0.0.1:{stack.other_port}",
            "--issuer",
            stack.issuer,
            "--upstream-url",
            upstream + "/anything",
            env=ENV,
        )
        with other:
            token = machine_token(stack, stack.other_resource)
            async with http_client(other.url, headers={"Authorization": f"Bearer {token}"}) as client:
                result = await client.call_tool("make_authenticated_request", {"message": "spy on me"})
    assert result.structured_content is not None, result
    received = b"\n".join(recorder.seen)
    assert b"spy on me" in received
    assert token.encode() not in received  # the upstream saw an exchanged token, never the caller's


def test_a_server_can_exchange_only_tokens_issued_for_it(stack: Stack) -> None:
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": machine_token(stack, stack.other_resource),
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "resource": EMBEDDED_URL,
    }
    # workshop-mcp-server may exchange tokens for both of its resources; a stranger may exchange nothing.
    stranger = httpx2.post(f"{stack.issuer}/token", data=form, auth=("workshop-machine", MACHINE_SECRET))
    assert stranger.json()["error"] in ("unauthorized_client", "invalid_request")
    forged = httpx2.post(
        f"{stack.issuer}/token",
        data={**form, "subject_token": forge(stack)},
        auth=("workshop-mcp-server", MCP_SERVER_SECRET),
    )
    assert forged.json()["error"] == "invalid_grant"


# --- a tool that needs more: step-up authorization -----------------------------------------


def test_a_tool_needing_more_scope_gets_a_403_challenge(stack: Stack) -> None:
    call = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_oauth_clients"}})
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "authorization": f"Bearer {machine_token(stack, stack.resource)}",  # it has mcp:read only
    }
    response = httpx2.post(stack.resource, content=call, headers=headers)
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="mcp:read mcp:admin"' in challenge
    assert 'resource_metadata="' in challenge


async def test_sdk_client_steps_up_to_the_admin_scope(stack: Stack) -> None:
    storage = MemoryStorage()
    async with signed_in(stack, storage) as client:
        who = await client.call_tool("who_am_i", {})
        listed = await client.call_tool("list_oauth_clients", {})  # 403, sign in again with more scope, retry
    assert who.structured_content is not None and who.structured_content["scope"] == "mcp:read"
    assert listed.structured_content is not None, listed
    names = [c["client_id"] for c in listed.structured_content["result"]]
    assert "workshop-machine" in names
    assert storage.tokens is not None and "mcp:admin" in (storage.tokens.scope or "")


# --- client.py: the OAuth client an attendee runs ---------------------------------------------


def run_client(stack: Stack, *args: str, token_dir: Path, browser: str) -> subprocess.CompletedProcess[str]:
    env = server_env(
        {"MCP_WORKSHOP_TOKEN_DIR": str(token_dir), "BROWSER": browser, "DEMO_PASSWORD": DEMO_PASSWORD, **ENV}
    )
    done = subprocess.run(
        [sys.executable, str(REPO / FOLDER / "client.py"), *args, stack.resource],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    CAPTURED_LOGS.append(done.stderr.splitlines())
    return done


def test_client_signs_in_through_the_browser_and_keeps_its_tokens_private(stack: Stack, tmp_path: Path) -> None:
    browser = f"{sys.executable} {REPO / 'tests' / 'fake_browser.py'} %s"
    first = run_client(stack, token_dir=tmp_path, browser=browser)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["sub"] == "demo"
    [stored] = list(tmp_path.iterdir())
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    tokens = json.loads(stored.read_text())["tokens"]
    remember_secret(tokens["access_token"])
    remember_secret(tokens.get("refresh_token", ""))
    # The next run signs in with the stored tokens: no browser at all.
    again = run_client(stack, token_dir=tmp_path, browser="false %s")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sub"] == "demo"


def test_client_credentials_mode(stack: Stack, tmp_path: Path) -> None:
    done = run_client(stack, "--client-credentials", token_dir=tmp_path, browser="false %s")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sub"] == "workshop-machine"


def test_the_machine_secret_waits_in_a_private_file_for_client_py_while_the_server_runs(tmp_path: Path) -> None:
    """The README's client-credentials example runs in a new shell: no MACHINE_CLIENT_SECRET, the file instead."""
    token_dir = tmp_path / "oauth"
    env = {"MCP_WORKSHOP_TOKEN_DIR": str(token_dir)}  # and no MACHINE_CLIENT_SECRET: the server makes one up
    port = free_port()
    resource = ("--resource", f"http://127.0.0.1:{port}/mcp")
    with ServerProcess(FOLDER, *resource, env=env, script="authorization_server.py") as auth:
        issuer = auth.url.removesuffix("/mcp")
        path = token_dir / f"machine-secret-{issuer.removeprefix('http://')}"
        [banner] = [line for line in auth.lines if "machine client: workshop-machine / " in line]
        secret = banner.rsplit(" / ", 1)[1]
        assert path.read_text() == secret + "\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_dir.stat().st_mode) == 0o700
        assert any(str(path) in line for line in auth.lines)  # the banner says where it is
        with ServerProcess(FOLDER, "--addr", f"127.0.0.1:{port}", "--issuer", issuer) as mcp_server:
            done = run_server(FOLDER, "--client-credentials", mcp_server.url, script="client.py", env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["sub"] == "workshop-machine"
        assert not [e for e in auth.events() if secret in json.dumps(e)]  # printed once for you, never logged
    assert not path.exists()  # a stopped server's secret is no use to anyone


def test_after_an_inspector_sign_in_q_keeps_its_keychain_notes_off_every_cli_call(stack: Stack, tmp_path: Path) -> None:
    """What 01's README says: once the Inspector has OAuth state, each CLI call talks about where it keeps
    secrets (five lines, on a machine without an OS keychain); `-q` leaves only the result."""
    env = {**node_env(), "HOME": str(tmp_path), "DEMO_PASSWORD": DEMO_PASSWORD}
    env["MCP_AUTO_OPEN_ENABLED"] = "true"  # the CLI opens the sign-in page without a terminal: BROWSER signs in
    env["BROWSER"] = f"{sys.executable} {REPO / 'tests' / 'fake_browser.py'} %s"
    callback = f"http://127.0.0.1:{free_port()}/oauth/callback"

    def inspector(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*node_tool("mcp-inspector"), "--cli", *args, "--method", "tools/list"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        CAPTURED_LOGS.append(done.stderr.splitlines())
        assert done.returncode == 0, done.stderr
        return done

    signed_in = inspector(stack.resource, "--callback-url", callback)
    assert "who_am_i" in signed_in.stdout and "Authorization complete" in signed_in.stderr
    with ServerProcess("01-basic-mcp") as basic:
        noisy, quiet = inspector(basic.url), inspector("-q", basic.url)
    if "DBUS_SESSION_BUS_ADDRESS" not in env:  # no Secret Service to ask, as under `make test` here: the notes appear
        assert len([line for line in noisy.stderr.splitlines() if line.startswith("[mcp-inspector]")]) == 5
    assert json.loads(quiet.stdout) == json.loads(noisy.stdout)
    assert quiet.stderr == ""


async def test_client_refuses_an_authorization_server_without_s256(tmp_path: Path) -> None:
    async def metadata(request: Request) -> JSONResponse:
        base = str(request.base_url).rstrip("/")
        if request.url.path.endswith("oauth-authorization-server"):
            endpoints = {"authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token"}
            return JSONResponse({"issuer": base, **endpoints, "code_challenge_methods_supported": ["plain"]})
        return JSONResponse({"resource": f"{base}/mcp", "authorization_servers": [base]})

    async def protected(request: Request) -> JSONResponse:
        base = str(request.base_url).rstrip("/")
        challenge = f'Bearer resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"'
        return JSONResponse({}, status_code=401, headers={"WWW-Authenticate": challenge})

    app = Starlette(
        routes=[
            Route("/mcp", protected, methods=["POST"]),
            Route("/.well-known/oauth-protected-resource/mcp", metadata),
            Route("/.well-known/oauth-authorization-server", metadata),
        ]
    )
    async with serve_app(app) as base:
        done = await anyio.to_thread.run_sync(
            lambda: run_client(Stack(base, f"{base}/mcp", 0), token_dir=tmp_path, browser="false %s")
        )
    assert done.returncode == 1
    assert "does not offer S256 PKCE; refusing to sign in there" in done.stderr


# --- introspection and revocation ------------------------------------------------------------


def introspect(
    stack: Stack, token: str, auth: tuple[str, str] | None = ("workshop-mcp-server", MCP_SERVER_SECRET)
) -> Any:
    return httpx2.post(f"{stack.issuer}/introspect", data={"token": token}, auth=auth)


def test_introspection_reports_only_active_access_tokens(stack: Stack) -> None:
    _, tokens = code_flow(stack)
    active = introspect(stack, tokens["access_token"]).json()
    assert (active["active"], active["sub"], active["aud"], active["token_type"]) == (
        True,
        "demo",
        stack.resource,
        "access_token",
    )
    assert introspect(stack, tokens["refresh_token"]).json() == {"active": False}
    assert introspect(stack, tokens["access_token"], auth=None).status_code == 401  # only for authenticated clients


def test_revoking_a_grant_ends_its_refresh_and_access_tokens(stack: Stack) -> None:
    client, tokens = code_flow(stack)
    form = {"token": tokens["refresh_token"], "client_id": client["client_id"]}
    assert httpx2.post(f"{stack.issuer}/revoke", data=form).status_code == 200
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": client["client_id"],
    }
    assert httpx2.post(f"{stack.issuer}/token", data=refresh).json()["error"] == "invalid_grant"
    assert introspect(stack, tokens["access_token"]).json() == {"active": False}


def test_introspection_mode_sees_a_revocation_at_once(stack: Stack) -> None:
    """The trade-off: a JWT stays valid at a JWT-checking server until it expires; introspection sees revocation."""
    local = machine_token(stack, stack.resource)
    auth = ("workshop-machine", MACHINE_SECRET)
    httpx2.post(f"{stack.issuer}/revoke", data={"token": local}, auth=auth)
    assert post_mcp(stack, local).status_code == 200  # checked locally: still good until `exp`

    checking = ServerProcess(
        FOLDER, "--addr", f"127.0.0.1:{stack.other_port}", "--issuer", stack.issuer, "--introspect", env=ENV
    )
    with checking:
        other = Stack(stack.issuer, stack.other_resource, 0)
        token = machine_token(stack, stack.other_resource)
        assert post_mcp(other, token).status_code == 200
        httpx2.post(f"{stack.issuer}/revoke", data={"token": token}, auth=auth)
        assert post_mcp(other, token).status_code == 401


# --- the official conformance suite, authorization-server mode --------------------------------


def test_conformance_authorization_server(stack: Stack, tmp_path: Path) -> None:
    """Both scenarios: metadata, and a full code grant in which a scripted user signs in when asked."""
    port = free_port()
    client = register(stack, redirect_uris=[f"http://127.0.0.1:{port}/callback"], client_name="conformance")
    command = [
        *node_tool("conformance"),
        "authorization",
        "--url",
        stack.issuer,
        "--client-id",
        client["client_id"],
        "--resource",
        stack.resource,
        "--port",
        str(port),
        "-o",
        str(tmp_path),
    ]
    harness = subprocess.Popen(
        command, cwd=REPO, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert harness.stdout is not None
    output = []
    try:
        for line in harness.stdout:
            output.append(line)
            url = re.search(r"https?://\S+/authorize\?\S+", line)
            if url:  # the harness waits for a person: sign in and follow the redirect to its callback
                httpx2.get(redirect_location(sign_in(url[0])))
        assert harness.wait(timeout=60) == 0, "".join(output)
    finally:
        if harness.poll() is None:
            harness.kill()
        harness.stdout.close()
    statuses = {c["id"]: c["status"] for f in tmp_path.rglob("checks.json") for c in json.loads(f.read_text())}
    assert statuses.get("authorization-code-grant") == "SUCCESS", statuses


def redirect_location(response: httpx2.Response) -> str:
    assert response.status_code == 302, response.text
    return response.headers["location"]


# --- the official conformance suite, client mode: our client against the suite's own servers --

CLIENT_COMMAND = f"{sys.executable} -m tests.conformance_oauth_client"  # run from the repository root


def run_conformance_client(*selection: str) -> subprocess.CompletedProcess[str]:
    return run_node_tool(
        "conformance", ["client", "--command", CLIENT_COMMAND, *selection, "--timeout", "60000"], timeout=300
    )


@pytest.mark.parametrize("revision", ["2025-11-25", "2026-07-28"])
def test_conformance_client_requirements(revision: str) -> None:
    """Exactly the client scenarios each revision requires, authorization and the rest: all must pass."""
    done = run_conformance_client("--requirements", revision)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert re.search(r"✓ auth/metadata-default: \d+ passed, 0 failed", output)  # the auth scenarios really ran


def test_conformance_client_credentials_extension() -> None:
    """Not scored by either revision, but this client ships client credentials, so it must pass too."""
    done = run_conformance_client("--scenario", "auth/client-credentials-basic")
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "OVERALL: PASSED" in output, output[-4000:]


# --- signing keys rotate; the MCP server follows -----------------------------------------------


def test_mcp_server_follows_a_key_rotation(tmp_path: Path) -> None:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    rotating = ServerProcess(
        FOLDER, "--resource", resource, "--rotate-keys-every", "6", env=ENV, script="authorization_server.py"
    )
    with rotating as auth, ServerProcess(FOLDER, "--addr", f"127.0.0.1:{port}", "--issuer", auth.url, env=ENV):
        stack = Stack(auth.url, resource, 0)
        before = machine_token(stack, resource)
        assert post_mcp(stack, before).status_code == 200  # the MCP server fetches the keys now
        fetched_at = time.monotonic()
        first_kid = jwt.decode(before, KeySet.import_key_set(httpx2.get(f"{auth.url}/jwks").json())).header["kid"]
        deadline = time.monotonic() + 10
        while httpx2.get(f"{auth.url}/jwks").json()["keys"][0]["kid"] == first_kid:
            assert time.monotonic() < deadline, "the key did not rotate"
            time.sleep(0.2)
        after = machine_token(stack, resource)  # signed with a key the MCP server has not seen
        # The MCP server refetches the keys for an unknown key id, at most once every 5 seconds. The
        # rotation (every 6 s) comes later than that, and the next one, which drops `before`'s key, later still.
        time.sleep(max(0.0, fetched_at + 5.2 - time.monotonic()))
        assert post_mcp(stack, after).status_code == 200
        assert post_mcp(stack, before).status_code == 200  # the previous key is still published


# --- more of the attack list ---------------------------------------------------------------


@pytest.mark.parametrize("near_miss", [CALLBACK + "/", CALLBACK.replace("3000", "3001"), CALLBACK.upper()])
def test_a_near_miss_redirect_uri_is_refused(stack: Stack, near_miss: str) -> None:
    client = register(stack)
    _, challenge = pkce()
    response = httpx2.get(authorize_url(stack, client["client_id"], challenge, redirect_uri=near_miss))
    assert response.status_code == 400 and "location" not in response.headers


def test_a_refresh_token_is_not_an_access_token(stack: Stack) -> None:
    _, tokens = code_flow(stack)
    assert post_mcp(stack, tokens["refresh_token"]).status_code == 401


def b64url_json(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned(stack: Stack) -> str:
    """`alg: none`: a token that claims to need no signature at all."""
    header = b64url_json({"alg": "none", "typ": "at+jwt"})
    return remember_secret(f"{header}.{b64url_json(mallorys_claims(stack))}.")


def test_an_unsigned_token_is_refused(stack: Stack) -> None:
    assert post_mcp(stack, unsigned(stack)).status_code == 401


async def test_verifier_refuses_expired_and_wrongly_typed_tokens() -> None:
    """The MCP server's checks one by one, with a key of the test's own, served as a JWKS."""
    resource_auth = load_sibling(FOLDER, "resource_auth")
    key = RSAKey.generate_key(2048, parameters={"kid": "test-key"})
    jwks = Starlette(routes=[Route("/jwks", lambda _: JSONResponse(KeySet([key]).as_dict(private=False)))])
    async with serve_app(jwks) as issuer:
        verifier = resource_auth.JwtVerifier(issuer, "http://127.0.0.1:1/mcp")
        good = {
            "iss": issuer,
            "sub": "u",
            "aud": "http://127.0.0.1:1/mcp",
            "client_id": "c",
            "scope": "mcp:read",
            "exp": int(time.time()) + 60,
        }

        def sign(claims: dict[str, Any], typ: str = "at+jwt", alg: str = "RS256") -> str:
            return jwt.encode({"alg": alg, "typ": typ, "kid": "test-key"}, claims, key, algorithms=[alg])

        assert await verifier.verify_token(sign(good)) is not None
        assert await verifier.verify_token(sign({**good, "exp": int(time.time()) - 120})) is None  # expired
        assert await verifier.verify_token(sign(good, typ="JWT")) is None  # an ID token, say
        assert await verifier.verify_token(sign({**good, "aud": "http://127.0.0.1:2/mcp"})) is None
        assert await verifier.verify_token(sign({**good, "iss": "http://127.0.0.1:3"})) is None
        assert await verifier.verify_token(sign({k: v for k, v in good.items() if k != "exp"})) is None
        assert await verifier.verify_token(sign(good, alg="PS256")) is None  # algorithms are pinned


async def test_issuer_mix_up_is_caught(stack: Stack) -> None:
    """RFC 9207: a response claiming to come from another authorization server is not used."""

    class MixedUp(HeadlessBrowser):
        async def open(self, url: str) -> None:
            await super().open(url)
            assert self.result is not None
            self.result = self.result.model_copy(update={"iss": "http://127.0.0.1:6666"})  # the attacker's issuer

    browser, storage = MixedUp(), MemoryStorage()
    oauth = OAuthClientProvider(
        server_url=stack.resource,
        client_metadata=OAuthClientMetadata(client_name="mix-up test", redirect_uris=[AnyUrl(CALLBACK)]),
        storage=storage,
        redirect_handler=browser.open,
        callback_handler=browser.callback,
    )
    with pytest.raises(BaseException) as raised:
        async with (
            httpx2.AsyncClient(auth=oauth, timeout=HTTP_TIMEOUT) as http,
            Client(streamable_http_client(stack.resource, http_client=http)) as client,
        ):
            await client.call_tool("who_am_i", {})
    assert "issuer" in repr(raised.value).lower() or "iss" in repr(raised.value)
    assert storage.tokens is None  # the code was never exchanged


# --- a shared store: Redis ---------------------------------------------------------------------


def test_state_survives_a_restart_with_redis() -> None:
    """Clients, codes, refresh tokens and signing keys live in Redis: a new instance carries on where one stopped."""
    as_port, mcp_port = free_port(), free_port()
    resource = f"http://127.0.0.1:{mcp_port}/mcp"

    def authorization_server(store: str) -> ServerProcess:
        return ServerProcess(
            FOLDER,
            "--addr",
            f"127.0.0.1:{as_port}",
            "--resource",
            resource,
            "--store",
            store,
            env=ENV,
            script="authorization_server.py",
        )

    with redis_server() as store:
        with authorization_server(store) as first:
            stack = Stack(first.url, resource, 0)
            client, tokens = code_flow(stack)
            verifier, challenge = pkce()
            code = redirect_params(sign_in(authorize_url(stack, client["client_id"], challenge)))["code"]
        with authorization_server(store):  # a new process: nothing in memory
            redeemed = httpx2.post(
                f"{stack.issuer}/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": CALLBACK,
                    "client_id": client["client_id"],
                    "code_verifier": verifier,
                },
            )
            assert redeemed.status_code == 200, redeemed.text
            remember_secret(redeemed.json()["access_token"])
            remember_secret(redeemed.json()["refresh_token"])
            refresh = {
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": client["client_id"],
            }
            refreshed = httpx2.post(f"{stack.issuer}/token", data=refresh)
            assert refreshed.status_code == 200, refreshed.text
            remember_secret(refreshed.json()["access_token"])
            remember_secret(refreshed.json()["refresh_token"])
            # Signed before the restart, still valid after it: the keys were kept too.
            assert introspect(stack, tokens["access_token"]).json()["active"] is True


def test_an_unreachable_store_is_one_clear_line() -> None:
    done = run_server(FOLDER, "--store", f"redis://127.0.0.1:{free_port()}/0", script="authorization_server.py")
    assert done.returncode == 2
    assert "cannot use the store" in done.stderr.strip().splitlines()[-1]


# --- a person with a real browser ----------------------------------------------------------

INSPECTOR_ORIGIN = "http://localhost:6274"


@pytest.mark.parametrize(
    ("server", "path", "method"),
    [
        ("as", "/.well-known/oauth-authorization-server", "GET"),
        ("as", "/register", "POST"),
        ("as", "/token", "POST"),
        ("mcp", "/.well-known/oauth-protected-resource/mcp", "GET"),
        ("mcp", "/mcp", "POST"),
    ],
)
def test_the_browser_inspector_may_call_what_it_needs(stack: Stack, server: str, path: str, method: str) -> None:
    """MCP Inspector's web UI runs discovery, registration and the token request from the page itself."""
    base = stack.issuer if server == "as" else stack.resource.removesuffix("/mcp")
    preflight = httpx2.options(
        base + path,
        headers={
            "origin": INSPECTOR_ORIGIN,
            "access-control-request-method": method,
            "access-control-request-headers": "content-type, authorization, mcp-protocol-version",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == INSPECTOR_ORIGIN
    foreign = httpx2.options(
        base + path, headers={"origin": "http://evil.example", "access-control-request-method": method}
    )
    assert "access-control-allow-origin" not in foreign.headers


def test_a_person_signs_in_with_a_real_browser(stack: Stack, tmp_path: Path) -> None:
    """client.py starts; headless Chromium signs in and consents; the redirect lands; the client shows who you are."""
    from playwright.sync_api import sync_playwright

    url_file = tmp_path / "authorization-url"
    opener = tmp_path / "open_url.py"  # what `webbrowser` runs: hand the URL over to the test's browser
    opener.write_text(f"import pathlib, sys\npathlib.Path({str(url_file)!r}).write_text(sys.argv[1])\n")
    env = server_env({"MCP_WORKSHOP_TOKEN_DIR": str(tmp_path / "tokens"), "BROWSER": f"{sys.executable} {opener} %s"})
    client = subprocess.Popen(
        [sys.executable, str(REPO / FOLDER / "client.py"), stack.resource],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not url_file.exists():
            assert time.monotonic() < deadline and client.poll() is None, "client.py never opened a browser"
            time.sleep(0.1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url_file.read_text())
            assert "MCP workshop client" in page.content()  # the consent page names the app asking
            page.fill("input[name=username]", "demo")
            page.fill("input[name=password]", DEMO_PASSWORD)
            page.click("button[value=allow]")
            page.wait_for_selector("text=Signed in. You can close this tab.")
            page.screenshot(path=str(tmp_path / "signed-in.png"))
            browser.close()
        out, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    CAPTURED_LOGS.append(err.splitlines())
    assert client.returncode == 0, err
    claims = json.loads(out)
    assert (claims["sub"], claims["aud"], claims["iss"]) == ("demo", stack.resource, stack.issuer)


# --- clients known by a metadata document (CIMD), and the SSRF guard ---------------------------


@contextlib.contextmanager
def serve_in_thread(app: Starlette) -> Iterator[str]:
    """An ASGI app on uvicorn in a thread of its own, for tests that call servers synchronously."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class DocumentHost:
    """Serves client metadata documents, and counts every request it gets."""

    def __init__(self) -> None:
        self.hits = 0
        self.documents: dict[str, Any] = {}
        self.app = Starlette(routes=[Route("/{name}", self.serve)])

    async def serve(self, request: Request) -> Response:
        self.hits += 1
        found = self.documents.get(request.path_params["name"])
        if isinstance(found, Response):
            return found
        return JSONResponse(found) if found is not None else JSONResponse({}, status_code=404)


@pytest.fixture(scope="module")
def cimd() -> Iterator[tuple[Stack, DocumentHost, str]]:
    """An authorization server that accepts metadata documents on loopback (its development flag), and their host."""
    host = DocumentHost()
    with serve_in_thread(host.app) as base:
        auth = ServerProcess(
            FOLDER,
            "--resource",
            "http://127.0.0.1:1/mcp",
            "--allow-loopback-client-metadata",
            env=ENV,
            script="authorization_server.py",
        )
        with auth:
            yield Stack(auth.url, "http://127.0.0.1:1/mcp", 0), host, base


def test_a_client_known_by_its_metadata_document_signs_in(cimd: tuple[Stack, DocumentHost, str]) -> None:
    stack, host, base = cimd
    client_id = f"{base}/app.json"
    host.documents["app.json"] = {"client_id": client_id, "client_name": "Document App", "redirect_uris": [CALLBACK]}
    verifier, challenge = pkce()
    url = authorize_url(stack, client_id, challenge)
    page = httpx2.get(url)
    assert "Document App" in page.text and "runs on your own machine" in page.text  # the localhost warning
    params = redirect_params(sign_in(url))
    form = {
        "grant_type": "authorization_code",
        "code": params["code"],
        "redirect_uri": CALLBACK,
        "client_id": client_id,
        "code_verifier": verifier,
    }
    token = httpx2.post(f"{stack.issuer}/token", data=form)
    assert token.status_code == 200, token.text
    remember_secret(token.json()["access_token"])
    remember_secret(token.json()["refresh_token"])
    metadata = httpx2.get(f"{stack.issuer}/.well-known/oauth-authorization-server").json()
    assert metadata["client_id_metadata_document_supported"] is True


@pytest.mark.parametrize(
    ("name", "document", "reason"),
    [
        (
            "other.json",
            {"client_id": "http://127.0.0.1:1/not-me.json", "client_name": "x", "redirect_uris": [CALLBACK]},
            "the document's client_id is not its own URL",
        ),
        (
            "secret.json",
            {"client_id": "SELF", "client_name": "x", "redirect_uris": [CALLBACK], "client_secret": "s"},
            "a client metadata document holds no secret",
        ),
        (
            "evil-redirect.json",
            {"client_id": "SELF", "client_name": "x", "redirect_uris": ["http://evil.example/cb"]},
            "redirect URIs must use HTTPS or point to loopback",
        ),
        ("big.json", {"client_id": "SELF", "client_name": "x" * 6000, "redirect_uris": [CALLBACK]}, "larger than 5 KB"),
        ("moved.json", RedirectResponse("http://127.0.0.1:1/elsewhere.json"), "answered 307, not 200"),
    ],
)
def test_a_bad_metadata_document_is_refused(
    cimd: tuple[Stack, DocumentHost, str], name: str, document: Any, reason: str
) -> None:
    stack, host, base = cimd
    client_id = f"{base}/{name}"
    if isinstance(document, dict) and document.get("client_id") == "SELF":
        document = {**document, "client_id": client_id}
    host.documents[name] = document
    _, challenge = pkce()
    response = httpx2.get(authorize_url(stack, client_id, challenge))
    assert response.status_code == 400 and "location" not in response.headers
    assert reason in response.json()["error_description"]


@pytest.mark.parametrize(
    "client_id",
    [
        "https://10.0.0.1/app.json",
        "https://169.254.169.254/latest/meta-data.json",
        "https://[::ffff:127.0.0.1]/app.json",
        "https://0x7f000001/app.json",
        "https://127.0.0.1/app.json",  # loopback: only behind the development flag
        "http://example.com/app.json",  # not https
        "https://user:pass@example.com/app.json",
        "https://example.com/",
        "https://example.com/a/../app.json",
    ],
)
def test_metadata_urls_that_could_reach_inside_are_refused_before_any_request(stack: Stack, client_id: str) -> None:
    _, challenge = pkce()
    started = time.monotonic()
    response = httpx2.get(authorize_url(stack, client_id, challenge))
    assert response.status_code == 400 and response.json()["error"] == "invalid_client"
    assert time.monotonic() - started < 2  # refused on sight, not after a connection attempt timed out


# --- throttling: registration floods and secret guessing -------------------------------------


def test_registration_floods_and_secret_guessing_are_throttled() -> None:
    limited = ServerProcess(FOLDER, "--registrations-per-minute", "3", env=ENV, script="authorization_server.py")
    with limited as auth:
        body = {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}
        statuses = [httpx2.post(f"{auth.url}/register", json=body).status_code for _ in range(4)]
        assert statuses == [201, 201, 201, 429]

        form = {"grant_type": "client_credentials"}
        guesses = [
            httpx2.post(f"{auth.url}/token", data=form, auth=("workshop-machine", f"guess-{i}")) for i in range(10)
        ]
        assert {g.status_code for g in guesses} == {401}
        right = httpx2.post(f"{auth.url}/token", data=form, auth=("workshop-machine", MACHINE_SECRET))
        assert right.status_code == 429 and right.headers["retry-after"] == "60"  # guessing must not pay


# --- the authorization server's command line -------------------------------------------------


def test_the_authorization_server_offers_no_stdio() -> None:
    """It is an HTTP server only: `--help` does not offer `-t`, and `-t stdio` is refused, not ignored."""
    shown = run_server(FOLDER, "--help", script="authorization_server.py")
    assert shown.returncode == 0 and "--addr" in shown.stdout
    assert "--transport" not in shown.stdout and "stdio" not in shown.stdout
    refused = run_server(FOLDER, "-t", "stdio", script="authorization_server.py")
    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert line.startswith("authorization_server.py: error: argument -t/--transport: invalid choice: 'stdio'")


def test_client_names_the_authorization_server_to_start_when_it_is_not_running() -> None:
    """03's server started before its authorization server: client.py fails in one line that says what to start."""
    issuer = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with ServerProcess(FOLDER, "--issuer", issuer, env=ENV) as mcp_server:
        done = run_server(FOLDER, "--client-credentials", f"{mcp_server.url}", script="client.py")
        assert httpx2.get(f"{mcp_server.base_url}/healthz").status_code == 200  # the server carries on
        warned = [e for e in mcp_server.events() if e.get("event", "").startswith("cannot reach the authorization")]
        assert [e["issuer"] for e in warned] == [issuer]  # it said so at start
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"client.py: error: cannot reach the authorization server {issuer}")
    assert "authorization_server.py" in line
