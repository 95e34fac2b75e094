"""A stand-in for a person at a browser, for client.py's tests (set as BROWSER).

It opens the sign-in page (following redirects, as a browser does), signs in as
the demo user (DEMO_PASSWORD), allows access, and follows the redirect to the
client's loopback callback.
"""

from __future__ import annotations

import os
import re
import sys

import httpx2


def main(url: str) -> None:
    page = httpx2.get(url, follow_redirects=True)
    fields = dict(re.findall(r'name="(request_id|csrf)" value="([^"]+)"', page.text))
    answer = {**fields, "username": "demo", "password": os.environ["DEMO_PASSWORD"], "decision": "allow"}
    redirect = httpx2.post(str(page.url).split("?")[0], data=answer)
    httpx2.get(redirect.headers["location"])  # the client's loopback server answers "Signed in"


if __name__ == "__main__":
    main(sys.argv[1])
