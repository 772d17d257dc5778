"""Who may talk to `refface serve`: requests for this server's own names only, changes only from its own page.

A server on the loopback address is still reachable from any web page the user visits: the page's scripts can
POST forms to it (cross-site requests), and a hostile name that resolves to 127.0.0.1 (DNS rebinding) makes
the browser treat the server as that site. Both are refused here. The Host header must name the server as the
user reaches it (the bound address, localhost, 127.0.0.1, [::1], or a name given with --allow-host), and a
request that changes anything (anything but GET, HEAD and OPTIONS) must come from the server's own page: its
Origin, which browsers send with such requests, must be the very scheme, name and port the request was sent to.
Clients that are not browsers (curl, scripts) send no Origin and are answered as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(value: str) -> str:
    """The name part of a Host header or URL netloc ("[::1]:7860" -> "::1", "Example.org:80" -> "example.org")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_names(bound: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names a client may call this server by: the loopback names, the bound address and the extra ones."""
    names = {*LOOPBACK_NAMES, *(host_name(name) for name in extra)}
    if bound not in ("0.0.0.0", "::", ""):
        names.add(host_name(bound))
    return frozenset(names)


class HostGuard:
    """ASGI middleware: refuse a Host outside `names`, and a changing request whose Origin is another site's."""

    def __init__(self, app, names: frozenset[str]) -> None:
        self.app, self.names = app, names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if host_name(host) not in self.names:
            shown = ", ".join(sorted(self.names))
            return await _refuse(send, f"This server answers to {shown}; start it with --allow-host for another name.")
        origin = headers.get(b"origin")
        if scope["method"] not in SAFE_METHODS and origin is not None:
            parts = urlsplit(origin.decode("latin-1"))
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.strip().lower():
                return await _refuse(send, "Requests that change anything must come from this server's own page.")
        return await self.app(scope, receive, send)


async def _refuse(send, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
