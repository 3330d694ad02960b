"""The public proxy forwards the Fleet API, byte for byte, and nothing else."""

import asyncio
import time

import httpx
import pytest
from flwr.superlink.routers.control.router import router as control_router
from flwr.superlink.routers.fleet.router import router as fleet_router

from fedsys.deploy.fleet_proxy import FleetProxy, ProxySettings, is_forwarded

UPSTREAM = "https://127.0.0.1:1"


def _settings(**kw):
    base = dict(
        listen_host="127.0.0.1",
        listen_port=0,
        upstream=UPSTREAM,
        certfile=None,
        keyfile=None,
        upstream_ca=None,
    )
    return ProxySettings(**{**base, **kw})


def _exchange(request_kwargs, *, settings=None, upstream=None):
    """Send one request through the proxy; return (response, requests the SuperLink saw)."""
    seen = []

    def superlink(request):
        seen.append(request)
        body = httpx.ByteStream(b"\x08\x01proto")  # streamed, as from a real connection
        return httpx.Response(200, stream=body, headers={"content-type": "application/protobuf"})

    async def go():
        proxy = FleetProxy(settings or _settings(), transport=httpx.MockTransport(upstream or superlink))
        transport = httpx.ASGITransport(app=proxy, client=("203.0.113.9", 4242))
        async with httpx.AsyncClient(transport=transport, base_url="https://fedsys.test") as client:
            response = await client.request(**request_kwargs)
        await proxy.aclose()
        return response

    return asyncio.run(go()), seen


def test_every_fleet_route_is_forwarded_and_no_control_route_is():
    fleet = [route.path for route in fleet_router.routes]
    control = [route.path for route in control_router.routes]

    assert len(fleet) >= 12 and all(is_forwarded("POST", path, path.encode()) for path in fleet)
    assert not any(is_forwarded("POST", path, path.encode()) for path in control)


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("POST", "/v1/control/register-node", None),
        ("POST", "/v1/runtime/acquire-task", None),
        ("GET", "/v1/fleet/pull-messages", None),
        ("POST", "/v1/fleet/../control/list-runs", None),
        ("POST", "/v1/fleet/x/../../control/stop-run", None),
        ("POST", "/v1/fleet/pull-messages", b"/v1/fleet/pull%2Dmessages"),
        ("POST", "/v1/fleet//pull-messages", None),
        ("POST", "/v1/fleetx/pull-messages", None),
        ("POST", "/v1/fleet/", None),
        ("POST", "/docs", None),
    ],
)
def test_anything_but_a_literal_fleet_call_is_refused(method, path, raw):
    assert not is_forwarded(method, path, raw)


def test_a_fleet_call_reaches_the_superlink_with_its_auth_headers_and_body():
    headers = {
        "content-type": "application/protobuf",
        "flwr-public-key": "cHVi",
        "flwr-signature": "c2ln",
        "flwr-timestamp": "2026-01-01T00:00:00+00:00",
        "x-forwarded-for": "10.9.9.9",  # a client's claim is replaced, never passed on
    }

    response, seen = _exchange(
        {"method": "POST", "url": "/v1/fleet/pull-messages", "content": b"\x01\x02body", "headers": headers}
    )

    assert response.status_code == 200 and response.content == b"\x08\x01proto"
    assert response.headers["content-type"] == "application/protobuf"
    [request] = seen
    assert str(request.url) == f"{UPSTREAM}/v1/fleet/pull-messages"
    assert request.content == b"\x01\x02body"
    for key in ("flwr-public-key", "flwr-signature", "flwr-timestamp", "content-type"):
        assert request.headers[key] == headers[key]
    assert request.headers.get_list("x-forwarded-for") == ["203.0.113.9"]


@pytest.mark.parametrize(
    "path",
    ["/v1/control/register-node", "/v1/control/list-runs", "/v1/control/start-run", "/v1/runtime/get-nodes"],
)
def test_control_and_runtime_calls_never_reach_the_superlink(path):
    response, seen = _exchange({"method": "POST", "url": path, "content": b"x"})

    assert response.status_code == 403 and b"only the Fleet API" in response.content
    assert seen == []


def test_a_query_string_is_refused():
    response, seen = _exchange({"method": "POST", "url": "/v1/fleet/get-run?x=1", "content": b""})

    assert response.status_code == 403 and seen == []


def test_an_oversized_body_is_refused_before_forwarding():
    response, seen = _exchange(
        {"method": "POST", "url": "/v1/fleet/push-object", "content": b"x" * 101},
        settings=_settings(max_body=100),
    )

    assert response.status_code == 413 and seen == []


def test_an_unreachable_superlink_is_a_bad_gateway():
    def down(request):
        raise httpx.ConnectError("refused", request=request)

    response, _ = _exchange({"method": "POST", "url": "/v1/fleet/get-run", "content": b""}, upstream=down)

    assert response.status_code == 502


def _superlink_with(answers):
    """An upstream answering pulls with ``answers`` in turn (status, body), the last one forever."""
    seen = []

    def superlink(request):
        seen.append(request)
        status, body = answers[min(len(seen), len(answers)) - 1]
        return httpx.Response(status, stream=httpx.ByteStream(body))

    return superlink, seen


_PULL = {"method": "POST", "url": "/v1/fleet/pull-messages", "content": b"\x0a\x02id", "headers": {"a": "1"}}


def test_an_empty_pull_is_held_until_the_superlink_has_a_message():
    superlink, seen = _superlink_with([(200, b""), (200, b""), (200, b""), (200, b"\x0a\x03msg")])

    response, _ = _exchange(_PULL, settings=_settings(pull_hold=5.0, pull_poll=0.01), upstream=superlink)

    assert response.status_code == 200 and response.content == b"\x0a\x03msg"
    assert len(seen) == 4  # the same signed request, repeated
    assert {(r.content, r.headers["a"]) for r in seen} == {(b"\x0a\x02id", "1")}


def test_an_empty_pull_is_answered_empty_when_the_hold_ends():
    superlink, seen = _superlink_with([(200, b"")])
    started = time.monotonic()

    response, _ = _exchange(_PULL, settings=_settings(pull_hold=0.2, pull_poll=0.02), upstream=superlink)

    assert response.status_code == 200 and response.content == b""
    assert 0.15 < time.monotonic() - started < 2.0 and len(seen) > 2


@pytest.mark.parametrize(
    ("request_kwargs", "answers", "hold"),
    [
        (_PULL, [(200, b"")], 0.0),  # hold off: Flower's own behaviour
        (_PULL, [(500, b"")], 5.0),  # an error goes straight back
        ({**_PULL, "url": "/v1/fleet/get-run"}, [(200, b"")], 5.0),  # only pulls are held
    ],
)
def test_only_empty_successful_pulls_are_held(request_kwargs, answers, hold):
    superlink, seen = _superlink_with(answers)

    response, _ = _exchange(
        request_kwargs, settings=_settings(pull_hold=hold, pull_poll=0.01), upstream=superlink
    )

    assert response.status_code == answers[0][0] and len(seen) == 1


def test_a_held_pull_backs_off_so_idle_nodes_do_not_flood_the_superlink():
    superlink, seen = _superlink_with([(200, b"")])

    _exchange(_PULL, settings=_settings(pull_hold=1.5, pull_poll=0.01), upstream=superlink)

    # 0.01 s growing 1.5x to 0.25 s: ~13 pulls in 1.5 s, where a fixed 0.01 s poll makes ~150
    assert 5 < len(seen) < 25
