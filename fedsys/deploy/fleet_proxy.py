"""The operator's public endpoint: a TLS reverse proxy that forwards only the SuperLink's Fleet API.

Flower 1.41's SuperLink serves its Fleet API (SuperNodes), Control API (``flwr run``,
``flwr ls``, ``flwr stop``, ``flwr supernode register``) and Runtime API (ServerApps) as
protobuf-over-HTTP on one port, and the open-source Control API authorises every caller.
fedsys therefore binds the SuperLink to 127.0.0.1 only and puts this proxy on the public
address. It forwards ``POST /v1/fleet/<endpoint>`` (every route SuperNodes use; SuperNode
authentication travels in headers, which are forwarded unchanged) and answers everything
else with 403 itself, so the Control and Runtime APIs, ``/docs`` and ``/health`` are not
reachable from the network at all.

An empty ``pull-messages`` answer is held back (long polling): Flower 1.41's SuperNode sleeps a
fixed 3 s after every pull that finds no message (``time.sleep(3)`` in
``flwr/supernode/start_client_internal.py``, not configurable), so every exchange of a round
waited up to 3 s for the next pull. The proxy instead repeats the node's pull against the
loopback SuperLink (after ``pull_poll`` seconds, then 1.5x longer each time, at most 0.25 s), for
up to ``pull_hold`` seconds, and answers as soon as a message is there (or the hold ends, or the
node hangs up). A repeated pull is the same
signed request (node auth signs a timestamp that Flower accepts for 300 s) and an empty pull
changes nothing in the SuperLink's state.

Assumptions: the SuperLink runs with ``--enable-supernode-auth`` (so Fleet
``register-node`` is refused by Flower and only allowlisted keys may activate); the
loopback interface is reachable only by the operator's host (its local users are trusted
as much as the state directory's owner).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger("fedsys.deploy.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FLEET_PATH = re.compile(r"^/v1/fleet/[a-z][a-z0-9-]{0,63}$")
REFUSAL = b"fedsys: only the Fleet API (POST /v1/fleet/*) is served on this address\n"
# Flower splits arrays into 5 MiB chunks (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE); leave ample headroom.
DEFAULT_MAX_BODY = 64 * 1024 * 1024
PULL_PATH = "/v1/fleet/pull-messages"
# Held well below the SuperNode's 30 s request timeout (flwr ProtobufClient's default).
DEFAULT_PULL_HOLD = 20.0
DEFAULT_PULL_POLL = 0.05  # first retry; each further one waits 1.5x longer, at most 0.25 s
_MAX_PULL_POLL = 0.25
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    }
)


@dataclass(frozen=True)
class ProxySettings:
    """Where the proxy listens and where the loopback SuperLink is."""

    listen_host: str
    listen_port: int
    upstream: str  # e.g. "https://127.0.0.1:41234"
    certfile: str | None  # None: plain HTTP (--insecure trials only)
    keyfile: str | None
    upstream_ca: str | None  # CA to verify the SuperLink's certificate; None: plain HTTP upstream
    max_body: int = DEFAULT_MAX_BODY
    read_timeout: float = 120.0
    pull_hold: float = DEFAULT_PULL_HOLD  # 0: answer empty pulls at once, as the SuperLink does
    pull_poll: float = DEFAULT_PULL_POLL


def is_forwarded(method: str, path: str, raw_path: bytes | None) -> bool:
    """True for a Fleet API call: ``POST /v1/fleet/<endpoint>``, spelled literally.

    The raw path must equal the decoded one, so no percent-encoding or dot segment can make
    the SuperLink route a request somewhere the proxy did not check.
    """
    if method != "POST" or FLEET_PATH.fullmatch(path) is None:
        return False
    return raw_path is None or raw_path == path.encode("ascii")


class FleetProxy:
    """ASGI application forwarding Fleet API calls to the loopback SuperLink."""

    def __init__(self, settings: ProxySettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self._client = httpx.AsyncClient(
            base_url=settings.upstream,
            verify=_upstream_tls(settings.upstream_ca),
            timeout=httpx.Timeout(30.0, read=settings.read_timeout),
            follow_redirects=False,
            trust_env=False,  # never route to the SuperLink through an environment proxy
            transport=transport,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: nothing of the SuperLink is served that way
        method, path = str(scope["method"]), str(scope["path"])
        client = _client_host(scope)
        if not is_forwarded(method, path, scope.get("raw_path")) or scope.get("query_string"):
            log.warning("refused %s %s from %s (not a Fleet API call)", method, path[:200], client)
            await _answer(send, 403, REFUSAL)
            return
        body = await _read_body(receive, self.settings.max_body)
        if body is None:
            limit = self.settings.max_body
            log.warning("refused %s %s from %s: body over %d bytes or cut off", method, path, client, limit)
            await _answer(send, 413, b"fedsys: request body too large or incomplete\n")
            return
        headers = _request_headers(scope, client)
        if path == PULL_PATH and self.settings.pull_hold > 0:
            await self._forward_held(path, headers, body, send, receive)
            return
        await self._forward(path, headers, body, send)

    async def _forward_held(
        self, path: str, headers: list[tuple[str, str]], body: bytes, send: Send, receive: Receive
    ) -> None:
        """Repeat an empty pull until a message is there, the hold ends or the node hangs up."""
        deadline = time.monotonic() + self.settings.pull_hold
        poll = self.settings.pull_poll  # grows, so that many idle nodes do not flood the SuperLink
        gone = asyncio.ensure_future(receive())  # the body is read: the next event is a disconnect
        try:
            while True:
                try:
                    response = await self._client.send(
                        self._client.build_request("POST", path, headers=headers, content=body), stream=True
                    )
                except httpx.HTTPError as err:
                    log.warning("the SuperLink did not answer %s: %s", path, err)
                    await _answer(send, 502, b"fedsys: the SuperLink is not reachable\n")
                    return
                try:
                    raw = b"".join([chunk async for chunk in response.aiter_raw()])
                finally:
                    await response.aclose()
                if not _keep_waiting(response, raw, deadline, poll) or gone.done():
                    break
                await asyncio.sleep(poll)
                poll = min(poll * 1.5, max(_MAX_PULL_POLL, self.settings.pull_poll))
            await _send_response(send, response, raw)
        finally:
            gone.cancel()

    async def _forward(self, path: str, headers: list[tuple[str, str]], body: bytes, send: Send) -> None:
        request = self._client.build_request("POST", path, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as err:
            log.warning("the SuperLink did not answer %s: %s", path, err)
            await _answer(send, 502, b"fedsys: the SuperLink is not reachable\n")
            return
        try:
            kept = _kept(response)
            await send({"type": "http.response.start", "status": response.status_code, "headers": kept})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        """Close the connection pool to the SuperLink."""
        await self._client.aclose()


def serve(settings: ProxySettings) -> None:
    """Run the proxy in the foreground (uvicorn) until SIGTERM/SIGINT."""
    import uvicorn

    config = uvicorn.Config(
        FleetProxy(settings),
        host=settings.listen_host,
        port=settings.listen_port,
        ssl_certfile=settings.certfile,
        ssl_keyfile=settings.keyfile,
        proxy_headers=False,  # a client's X-Forwarded-For is never trusted here
        server_header=False,
        date_header=False,  # the SuperLink's own Server/Date headers are passed through
        access_log=False,
        log_level="warning",
        lifespan="on",
        http="h11",
        ws="none",
    )
    uvicorn.Server(config).run()


def _upstream_tls(ca_file: str | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return False
    return ssl.create_default_context(cafile=ca_file)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _request_headers(scope: Scope, client: str) -> list[tuple[str, str]]:
    headers = []
    for raw_key, raw_value in scope.get("headers", []):
        key = bytes(raw_key).decode("latin-1").lower()
        if key not in _HOP_BY_HOP:
            headers.append((key, bytes(raw_value).decode("latin-1")))
    headers += [("x-forwarded-for", client), ("x-forwarded-proto", str(scope.get("scheme", "https")))]
    return headers


def _client_host(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _keep_waiting(response: httpx.Response, raw: bytes, deadline: float, poll: float) -> bool:
    """True for an empty, successful pull with time left (an empty protobuf message is 0 bytes)."""
    plain = "content-encoding" not in response.headers
    return response.status_code == 200 and plain and raw == b"" and time.monotonic() + poll < deadline


async def _send_response(send: Send, response: httpx.Response, raw: bytes) -> None:
    await send({"type": "http.response.start", "status": response.status_code, "headers": _kept(response)})
    await send({"type": "http.response.body", "body": raw, "more_body": False})


def _kept(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    """The SuperLink's response headers, less hop-by-hop ones (raw bytes: content-length holds)."""
    return [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in response.headers.multi_items()
        if k.lower() not in _HOP_BY_HOP or k.lower() == "content-length"
    ]


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
