"""Connection limits, API keys and the rate limit against a REAL server (uvicorn subprocess),
probed with raw sockets where a well-behaved client library would not misbehave on purpose:
oversized headers (431), requests that never finish arriving (408, connection closed), silent
connections (closed), chunked bodies over the size limit (413)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.test_serve_support import Server, bundle_ids

READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    store = tmp_path_factory.mktemp("limits") / "store.sqlite"
    with Server(bundle, store, "--llm", "none", "--max-header-bytes", "8192", "--read-timeout", str(READ_TIMEOUT),
                "--idle-timeout", str(READ_TIMEOUT)) as srv:
        yield srv


def connect(srv: Server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_all(s: socket.socket, limit: float = 10.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or `limit` seconds pass (False)."""
    s.settimeout(0.5)
    out, deadline = b"", time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return out, True
        if not chunk:
            return out, True
        out += chunk
    return out, False


def test_oversized_headers_get_431(server):
    s = connect(server)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    got, closed = read_all(s)
    assert got.startswith(b"HTTP/1.1 431") and closed, got[:200]
    # headers under the limit are fine
    r = server.client.get("/healthz", headers={"x-fine": "b" * 4000})
    assert r.status_code == 200


@pytest.mark.parametrize("partial", [
    b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",            # headers never end
    b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    b'{"user_id": ',                                                                         # body shorter than said
], ids=["half-headers", "short-body"])
def test_requests_that_never_finish_arriving_are_closed_with_408(server, partial):
    s = connect(server)
    s.sendall(partial)
    got, closed = read_all(s, limit=READ_TIMEOUT + 8)
    assert closed, "the server kept the half-sent request open"
    assert got.startswith(b"HTTP/1.1 408"), got[:200]


def test_many_half_sent_requests_are_all_dropped_and_the_server_keeps_serving(server, bundle):
    users, items = bundle_ids(bundle)
    socks = [connect(server) for _ in range(100)]
    for s in socks:
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")
    r = server.client.post("/v1/score", json={"user_id": users[0], "item_ids": items[:5]})
    assert r.status_code == 200
    time.sleep(READ_TIMEOUT + 2)
    still_open = 0
    for s in socks:
        _, closed = read_all(s, limit=3)
        still_open += not closed
        s.close()
    assert still_open == 0


def test_silent_connections_are_closed(server):
    s = connect(server)
    got, closed = read_all(s, limit=READ_TIMEOUT + 8)
    assert closed and got == b""


def test_chunked_body_over_the_limit_gets_413(server):
    s = connect(server)
    s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"a" * 65536
    try:
        for _ in range(160):                                  # 10 MB, if the server let it
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        s.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    got, _ = read_all(s, limit=10)
    assert got.startswith(b"HTTP/1.1 413"), got[:300]
    assert b"larger than" in got


def test_api_keys_and_rate_limit(bundle, tmp_path):
    users, items = bundle_ids(bundle)
    body = {"user_id": users[0], "item_ids": items[:3]}
    with Server(bundle, tmp_path / "store.sqlite", "--llm", "none", "--rate-limit", "1", "--rate-burst", "4",
                env={"REASONREC_API_KEYS": "key-one, key-two"}) as srv:
        c = srv.client
        assert c.get("/healthz").status_code == 200                     # probes need no key
        r = c.post("/v1/score", json=body)
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert c.post("/v1/score", json=body, headers={"x-api-key": "wrong"}).status_code == 401
        assert c.post("/v1/score", json=body, headers={"x-api-key": "key-two"}).status_code == 200
        assert c.post("/v1/score", json=body, headers={"authorization": "Bearer key-one"}).status_code == 200
        # key-one has spent 1 of its 4; the next burst runs out, key-two's bucket is its own
        codes = [c.post("/v1/score", json=body, headers={"x-api-key": "key-one"}).status_code for _ in range(8)]
        assert codes.count(429) >= 3 and codes[:3] == [200, 200, 200], codes
        limited = c.post("/v1/score", json=body, headers={"x-api-key": "key-one"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert c.post("/v1/score", json=body, headers={"x-api-key": "key-two"}).status_code == 200
        time.sleep(1.1)                                                 # a token back
        assert c.post("/v1/score", json=body, headers={"x-api-key": "key-one"}).status_code == 200
        spec = c.get("/openapi.json").json()
        assert set(spec["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
        responses = spec["paths"]["/v1/score"]["post"]["responses"]
        assert {"401", "429"} <= set(responses)
        assert "security" not in spec["paths"]["/healthz"]["get"]
        assert json.loads(json.dumps(spec))                             # still a valid document
