"""Streamable HTTP transport: loopback by default, bearer token required anywhere else."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

TOKEN_ENV = "INSTRUCTCELL_MCP_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume reachable from elsewhere


def check_http_exposure(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token (anyone on the network could call)."""
    if not is_loopback(host) and not token:
        raise ValueError(f"refusing to serve HTTP on {host} without a bearer token: set {TOKEN_ENV} (clients then "
                         "send 'Authorization: Bearer <token>'), or bind 127.0.0.1")


class BearerTokenMiddleware:
    """Answers 401 to HTTP requests whose `Authorization` header is not `Bearer <token>`.

    A plain ASGI wrapper: the SDK's own auth expects an OAuth provider or token verifier with
    issuer metadata, which is more than one shared secret needs.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("an empty token would accept anyone")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan events carry no headers and must reach the app
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
        # compare_digest: the time taken does not reveal how much of the token matched.
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        log.info("refused an HTTP request without a valid bearer token from %s", scope.get("client"))
        body = json.dumps({"error": "unauthorized", "error_description": "missing or wrong bearer token"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def http_app(server, host: str, token: str | None, path: str = "/mcp") -> ASGIApp:
    """The SDK's streamable HTTP app for `server`, behind the token check when a token is set."""
    check_http_exposure(host, token)
    app = server.streamable_http_app(streamable_http_path=path, host=host)
    return BearerTokenMiddleware(app, token) if token else app
