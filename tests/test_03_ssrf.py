"""03-oauth-mcp: the client-metadata fetch reaches only globally routable unicast addresses.

The decision is tested by calling it on each spelling an attacker's DNS
could answer with; nothing here connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from tests.harness import load_sibling

pytestmark = pytest.mark.anyio

client_metadata = load_sibling("03-oauth-mcp", "identity_provider.client_metadata")


def spellings(text: str) -> list[str]:
    return text.split()


REFUSED = [
    # loopback, private, link-local, unspecified, shared, reserved, broadcast
    *spellings("127.0.0.1 10.0.0.1 172.16.0.1 192.168.1.1 169.254.169.254 0.0.0.0 100.64.0.1 240.0.0.1"),
    *spellings("255.255.255.255 ::1 :: fe80::1 fc00::1 fd12:3456::1"),
    # multicast, both families, including the globally scoped ranges that `is_global` lets through
    *spellings("224.0.0.1 224.0.1.1 233.252.0.1 239.255.255.250 ff02::1 ff0e::1 ff05::1:3"),
    # an IPv4 address inside an IPv6 one: mapped, compatible, NAT64 (well-known and local-use), 6to4, Teredo
    *spellings("::ffff:127.0.0.1 ::ffff:169.254.169.254 ::ffff:10.0.0.1 ::127.0.0.1 ::169.254.169.254"),
    *spellings("64:ff9b::a9fe:a9fe 64:ff9b::7f00:1 64:ff9b::a00:1 64:ff9b::e000:1 64:ff9b:1::808:808"),
    *spellings("64:ff9b:1:ffff::a9fe:a9fe 2002:a9fe:a9fe::1 2002:7f00:1::1 2002:c0a8:101::1 2002:e000:1::"),
    *spellings("2001:0:4136:e378:8000:63bf:3fff:fdd2 2001::a9fe:a9fe"),
    # documentation and benchmarking ranges
    *spellings("192.0.2.1 198.51.100.1 203.0.113.1 198.18.0.1 2001:db8::1"),
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001::1", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("text", REFUSED)
def test_the_metadata_fetch_refuses_every_spelling_of_a_non_public_address(text: str) -> None:
    assert not client_metadata.is_public_unicast(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", ALLOWED)
def test_the_metadata_fetch_allows_public_unicast(text: str) -> None:
    assert client_metadata.is_public_unicast(ipaddress.ip_address(text))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "0x7f.1"])
async def test_a_metadata_url_that_resolves_to_loopback_is_refused_before_any_connection(host: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        port = listener.getsockname()[1]
        documents = client_metadata.ClientMetadataDocuments("mcp:read")
        with pytest.raises(client_metadata.ClientMetadataError, match=r"private or special address|does not resolve"):
            await documents.resolve(f"https://{host}:{port}/app.json")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody knocked
    finally:
        listener.close()
