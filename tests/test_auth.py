"""API keys in one process (the app itself, through Starlette's test client): the key file's
format, what each scope may do, and that the scope a route needs is the one it declares."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from compatret import CompatretError
from compatret.engine.service import Service
from compatret.server.app import create_app
from compatret.server.auth import ApiKeys, is_loopback
from compatret.server.middleware import route_scope

WRITE = "write-key-0123456789abcdef"
READ = "read-key-0123456789abcdef"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "g"
    s = Service.create(path, dim=4, version_id="v1")
    s.add_vectors([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], ids=["a", "b"])
    return path


def client(gallery, keys: ApiKeys, key: str | None) -> TestClient:
    app = create_app(gallery, refresh_seconds=0.0, keys=keys, fingerprint_minutes=0)
    return TestClient(app, headers={"Authorization": f"Bearer {key}"} if key else {})


def test_key_file_format(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"# comment\n\nwrite {WRITE}\n  read {READ}  \n")
    keys = ApiKeys.load(f, environ={})
    assert keys.scope_of(WRITE) == "write" and keys.scope_of(READ) == "read" and keys.scope_of("x" * 20) is None
    assert keys.enabled and not ApiKeys.load(None, environ={}).enabled
    for bad, says in [(f"admin {WRITE}\n", ":1: expected"), (f"write {WRITE} extra\n", ":1: expected"), ("\nread short\n", "16-512")]:
        f.write_text(bad)
        with pytest.raises(CompatretError, match=says):
            ApiKeys.load(f, environ={})
    with pytest.raises(CompatretError, match="cannot read API key file"):
        ApiKeys.load(tmp_path / "missing", environ={})
    env = ApiKeys.load(None, environ={"COMPATRET_API_KEY": WRITE, "COMPATRET_READ_API_KEY": READ})
    assert env.scope_of(WRITE) == "write" and env.scope_of(READ) == "read"
    assert ApiKeys.load(None, environ={"COMPATRET_READ_API_KEY": READ}).scope_of(READ) == "read"
    with pytest.raises(CompatretError, match="write API key"):
        ApiKeys.load(None, environ={"COMPATRET_API_KEY": "bad key with spaces!!"})


def test_a_key_with_both_scopes_is_a_write_key():
    both = ApiKeys.load(None, environ={"COMPATRET_API_KEY": WRITE, "COMPATRET_READ_API_KEY": WRITE})
    assert both.scope_of(WRITE) == "write"


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
                                         ("0.0.0.0", False), ("10.0.0.1", False), ("example.org", False)])
def test_loopback_hosts(host, local):
    assert is_loopback(host) is local


def test_only_a_read_key_configured(gallery):
    keys = ApiKeys.load(None, environ={"COMPATRET_READ_API_KEY": READ})
    anon, reader = client(gallery, keys, None), client(gallery, keys, READ)
    assert anon.post("/items/delete", json={"ids": ["a"]}).status_code == 401
    assert anon.post("/query", json={"vectors": [[1.0, 0, 0, 0]]}).status_code == 401
    assert anon.get("/gallery").status_code == 401
    assert anon.post("/nowhere", json={}).status_code == 401
    assert reader.post("/items/delete", json={"ids": ["a"]}).status_code == 403
    hit = reader.post("/query", json={"vectors": [[1.0, 0, 0, 0]], "k": 1})
    assert hit.status_code == 200 and hit.json()["results"][0]["ids"] == ["a"]
    assert reader.get("/gallery/").status_code == 200  # the trailing slash reaches the same read route
    assert reader.head("/backfill").status_code in (200, 405)  # HEAD is read like GET: never a 403
    assert anon.get("/health").status_code == 200 and anon.get("/openapi.json").status_code == 200
    assert anon.get("/").status_code == 200 and anon.get("/console/console.js").status_code == 200


def test_write_and_read_keys(gallery):
    keys = ApiKeys.load(None, environ={"COMPATRET_API_KEY": WRITE, "COMPATRET_READ_API_KEY": READ})
    writer, reader, wrong = client(gallery, keys, WRITE), client(gallery, keys, READ), client(gallery, keys, "z" * 24)
    assert wrong.get("/gallery").status_code == 401 and wrong.get("/gallery").json()["detail"] == "unknown API key"
    assert client(gallery, keys, None).get("/gallery").json()["detail"].startswith("missing API key")
    assert TestClient(writer.app, headers={"Authorization": f"Basic {WRITE}"}).get("/gallery").status_code == 401
    assert reader.get("/gallery").json()["can_write"] is False and writer.get("/gallery").json()["can_write"] is True
    r = reader.post("/upgrade", json={"model": "v1"})
    assert r.status_code == 403 and "write key" in r.json()["detail"]
    assert writer.post("/items/delete", json={"ids": ["zzz"]}).status_code == 400  # past the key: the gallery's own refusal


def test_a_request_that_reaches_no_route_needs_a_write_key(gallery):
    keys = ApiKeys.load(None, environ={"COMPATRET_API_KEY": WRITE, "COMPATRET_READ_API_KEY": READ})
    reader, writer = client(gallery, keys, READ), client(gallery, keys, WRITE)
    for path in ("/queryX", "/query/", "/no-such-route"):  # a trailing slash still reaches /query: a read route
        r = reader.post(path, json={"vectors": [[1.0, 0.0, 0.0, 0.0]], "k": 1})
        assert (r.status_code, path) == ((200, path) if path == "/query/" else (403, path))
    assert reader.get("/nothing-here").status_code == 403
    assert writer.get("/nothing-here").status_code == 404  # past the key: the router's own answer


def test_a_post_that_is_not_json_is_refused_before_its_key_is_read(gallery):
    keys = ApiKeys.load(None, environ={"COMPATRET_API_KEY": WRITE, "COMPATRET_READ_API_KEY": READ})
    reader = client(gallery, keys, READ)
    body = '{"vectors": [[1, 0, 0, 0]], "k": 1}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):  # what a cross-site form may send
        headers = {"Content-Type": content_type} if content_type else {}
        r = reader.post("/query", content=body, headers=headers)
        assert r.status_code == 415
        assert r.json() == {"detail": "a POST must say Content-Type: application/json (send {} when there is nothing to say)"}
    assert reader.post("/query", content=body, headers={"Content-Type": "Application/JSON; charset=utf-8"}).status_code == 200
    assert reader.get("/gallery").status_code == 200  # a GET has no body to judge
    spaced = TestClient(reader.app, headers={"Authorization": f"Bearer  {READ}"})  # extra blanks around the key are forgiven
    assert spaced.get("/gallery").status_code == 200


def test_the_key_check_says_which_scope_it_granted(gallery):
    """KeyCheck as a bare ASGI middleware: a request scope may come without `state` (it is optional in ASGI)."""
    import asyncio

    from compatret.server.middleware import KeyCheck

    app = create_app(gallery, refresh_seconds=0.0, fingerprint_minutes=0)
    seen: list[object] = []

    async def downstream(scope, receive, send):
        seen.append(scope["state"]["key_scope"])

    def call(keys: ApiKeys, path: str, key: str | None = None) -> None:
        headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
        scope = {"type": "http", "method": "GET", "path": path, "headers": headers}
        asyncio.run(KeyCheck(downstream, keys, app.router)(scope, None, None))

    keys = ApiKeys.load(None, environ={"COMPATRET_API_KEY": WRITE, "COMPATRET_READ_API_KEY": READ})
    call(ApiKeys(), "/gallery")  # no keys: everything may write
    call(keys, "/health")  # a route that declares no scope, on a keyed server: no key granted
    call(keys, "/gallery", READ)
    assert seen == ["write", None, "read"]


def test_refusals_say_what_to_send(gallery):
    keys = ApiKeys.load(None, environ={"COMPATRET_API_KEY": WRITE, "COMPATRET_READ_API_KEY": READ})
    r = client(gallery, keys, None).get("/gallery")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"  # RFC 6750: the scheme to use
    r = client(gallery, keys, READ).post("/upgrade", json={"model": "v1"})
    assert r.json() == {"detail": "this key may read only: writes need a write key"}


def _asgi(app, scope: dict, messages: list[dict]) -> list[dict]:
    """Run one ASGI app on a request (its body as `messages`): what it sent back."""
    import asyncio

    sent: list[dict] = []
    pending = list(messages)

    async def receive() -> dict:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_the_body_limit_counts_declared_and_streamed_bodies_and_hands_on_the_whole_body():
    from compatret.server.middleware import BodyLimit

    got: list[dict] = []

    async def downstream(scope, receive, send):
        got.append(await receive())
        got.append(await receive())

    def request(length: bytes | None = None) -> dict:
        return {"type": "http", "method": "POST", "path": "/items", "headers": [(b"content-length", length)] if length else []}

    limit = BodyLimit(downstream, limit=10)
    for length in (b"11", b"1e3", b"-1"):  # over the limit, or not a length at all: refused before any of it is read
        sent = _asgi(limit, request(length), [])
        assert sent[0]["status"] == 413 and json.loads(sent[1]["body"]) == {"detail": "request body over 10 bytes"} and not got
    parts = [{"type": "http.request", "body": b"12345", "more_body": True}, {"type": "http.request", "body": b"678901", "more_body": False}]
    sent = _asgi(limit, request(), parts)
    assert sent[0]["status"] == 413 and json.loads(sent[1]["body"]) == {"detail": "request body over 10 bytes"} and not got  # streamed
    parts = [{"type": "http.request", "body": b"12345", "more_body": True}, {"type": "http.request", "more_body": True},  # no body: b""
             {"type": "http.request", "body": b"67890"}]
    assert _asgi(limit, request(b"10"), parts) == []  # exactly the limit
    assert got == [{"type": "http.request", "body": b"1234567890", "more_body": False}, {"type": "http.disconnect"}]
    got.clear()
    assert _asgi(limit, request(), [{"type": "http.request", "body": b"12", "more_body": True}, {"type": "http.disconnect"}]) == []
    assert not got  # the client left mid-body: nothing to pass on, nobody to answer
    async def echo(scope, receive, send):
        await send({"type": "websocket.accept", "path": scope["path"]})

    websocket = {"type": "websocket", "path": "/ws", "headers": [(b"content-length", b"999")]}
    assert _asgi(BodyLimit(echo, limit=10), websocket, []) == [{"type": "websocket.accept", "path": "/ws"}]  # passed on untouched


def test_a_route_whose_dependencies_declare_no_scope_needs_none():
    from fastapi import Depends, FastAPI

    app = FastAPI()

    @app.get("/plain", dependencies=[Depends(lambda: None)])
    def plain() -> dict:
        return {}

    route = next(r for r in app.router.routes if getattr(r, "path", "") == "/plain")
    assert route_scope(route) is None


def test_no_keys_configured_lets_everything_through(gallery):
    open_ = client(gallery, ApiKeys(), None)
    assert open_.get("/gallery").json()["can_write"] is True
    assert open_.post("/items/delete", json={"ids": ["zzz"]}).status_code == 400


def test_every_data_route_declares_its_scope(gallery):
    """The one table of scopes is the routes': each API route but health says read or write."""
    app = create_app(gallery, refresh_seconds=0.0, keys=ApiKeys(), fingerprint_minutes=0)
    declared = {(sorted(r.methods)[0], r.path): route_scope(r) for r in app.routes if hasattr(r, "methods") and r.include_in_schema}
    assert declared[("GET", "/health")] is None
    assert {k for k, v in declared.items() if v == "read"} == {("POST", "/query"), ("GET", "/backfill"), ("GET", "/gallery"), ("GET", "/history")}
    assert all(v == "write" for k, v in declared.items() if v not in (None, "read"))
    assert {k for k, v in declared.items() if v is None} == {("GET", "/health")}


def test_rollback_and_history_over_http(tmp_path):
    """The write routes that reach the store directly (rollback, history) answer, not 500."""
    path = tmp_path / "g"
    s = Service.create(path, dim=4, version_id="v1")
    s.add_vectors([[1.0, 0.0, 0.0, 0.0]], ids=["a"])
    before = s.gallery.version
    s.add_vectors([[0.0, 1.0, 0.0, 0.0]], ids=["b"])
    http = client(path, ApiKeys(), None)
    assert http.post("/rollback", json={"version": before}).json()["restored"] == before
    assert http.get("/gallery").json()["rows"] == 1
    assert http.get("/history").json()[0]["change"].startswith("rollback")


def test_keys_come_from_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("COMPATRET_API_KEY", WRITE)
    monkeypatch.delenv("COMPATRET_READ_API_KEY", raising=False)
    assert ApiKeys.load().scope_of(WRITE) == "write"


def test_the_app_starts_and_stops_through_both_middlewares(gallery):
    """The lifespan (start-up and shut-down) passes the key check and the body limit untouched:
    it is not an HTTP request and has no path, route or body."""
    keys = ApiKeys.load(environ={"COMPATRET_API_KEY": "w-key-0123456789"})
    with TestClient(create_app(gallery, refresh_seconds=0.0, keys=keys, fingerprint_minutes=0)) as c:
        assert c.get("/health").status_code == 200
