"""`cola-fed serve-node` (cola_fed/federation/page_server.py): the browser node's page and the
same-origin Fleet forwarder.

Fast tests check what the relay passes and what it refuses against a recorded SuperLink (an
httpx mock): Flower's headers and the body go through untouched, nothing else goes either way,
only Fleet routes are forwarded, bodies are bounded, the page carries its security headers.
The slow test puts the forwarder in front of a real SuperLink with TLS and SuperNode
authentication: the JavaScript node (its echo fixture, the same loop as the browser node's)
serves a Flower app through it, every call signed by the node and verified by the SuperLink.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from flower_processes import ECHO_NODE, ROOT, FlowerProcesses
from test_deployment import BIN, wait_for_port

from cola_fed.errors import ConfigError
from cola_fed.federation.page_server import (
    CONTENT_SECURITY_POLICY,
    SuperLinkTarget,
    is_loopback,
    page_app,
    serve,
)
from cola_fed.federation.simulate import free_port

FLOWER_HEADERS = {
    "content-type": "application/protobuf", "accept": "application/protobuf",
    "flwr-public-key": "cHVibGlj", "flwr-timestamp": "2026-01-01T00:00:00+00:00",
    "flwr-signature": "c2ln", "flwr-package-name": "flwr", "flwr-package-version": "1.42.0",
    "flwr-component-name": "SuperNode",
}


def page_dir(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "index.html").write_text("<!doctype html><title>node</title>")
    (tmp_path / "ort").mkdir(parents=True, exist_ok=True)
    (tmp_path / "ort" / "x.wasm").write_bytes(b"\0asm\1\0\0\0")
    return tmp_path


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as c:
            return await c.request(method, path, **kwargs)
    return asyncio.run(go())


def recording_app(tmp_path, answer=None):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request) if answer else httpx.Response(
            200, content=b"\x08\x01", headers={"content-type": "application/protobuf",
                                               "set-cookie": "a=b", "x-link": "secret"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    target = SuperLinkTarget("127.0.0.1:9092", insecure=True)
    return page_app(target, page_dir(tmp_path), client=client), seen


def test_flower_headers_and_body_pass_untouched_and_nothing_else(tmp_path):
    app, seen = recording_app(tmp_path)
    extra = {"cookie": "session=1", "authorization": "Bearer x", "x-forwarded-for": "10.0.0.1",
             "origin": "http://127.0.0.1:8080"}
    answer = call(app, "POST", "/v1/fleet/pull-messages", content=b"\x0a\x02hi",
                  headers={**FLOWER_HEADERS, **extra})
    assert answer.status_code == 200 and answer.content == b"\x08\x01"
    assert answer.headers["content-type"] == "application/protobuf"
    assert "set-cookie" not in answer.headers and "x-link" not in answer.headers
    [sent] = seen
    assert str(sent.url) == "http://127.0.0.1:9092/v1/fleet/pull-messages"
    assert sent.content == b"\x0a\x02hi"
    for name, value in FLOWER_HEADERS.items():
        assert sent.headers[name] == value
    added = set(sent.headers) - set(FLOWER_HEADERS)
    # only what httpx itself writes on any request (the relay adds no header of its own)
    assert added <= {"host", "content-length", "accept-encoding", "connection", "user-agent"}


def test_the_superlink_s_status_comes_back_as_it_is(tmp_path):
    app, _ = recording_app(tmp_path, lambda r: httpx.Response(401, content=b'{"detail":"no"}'))
    answer = call(app, "POST", "/v1/fleet/activate-node", content=b"", headers=FLOWER_HEADERS)
    assert answer.status_code == 401 and answer.content == b'{"detail":"no"}'


def test_only_fleet_routes_are_forwarded_and_only_posts(tmp_path):
    app, seen = recording_app(tmp_path)
    assert call(app, "POST", "/v1/fleet/list-runs", content=b"").status_code == 404
    assert call(app, "POST", "/v1/control/list-runs", content=b"").status_code in (404, 405)
    assert call(app, "GET", "/v1/fleet/pull-messages").status_code in (404, 405)
    assert not seen


def test_a_body_past_the_bound_is_refused_before_forwarding(tmp_path):
    from cola_fed.federation import page_server

    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    forward = page_server.fleet_forwarder(SuperLinkTarget("127.0.0.1:1", insecure=True), client,
                                          max_request_bytes=10)
    from starlette.applications import Starlette
    from starlette.routing import Route

    app = Starlette(routes=[Route("/v1/fleet/{route}", forward, methods=["POST"])])
    assert call(app, "POST", "/v1/fleet/push-object", content=b"x" * 11,
                headers=FLOWER_HEADERS).status_code == 413
    assert call(app, "POST", "/v1/fleet/push-object", content=b"x" * 10,
                headers=FLOWER_HEADERS).status_code == 200


def test_an_unreachable_superlink_is_a_502_the_node_retries(tmp_path):
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    app, _ = recording_app(tmp_path, refuse)
    assert call(app, "POST", "/v1/fleet/pull-messages", content=b"",
                headers=FLOWER_HEADERS).status_code == 502


def test_only_protobuf_calls_are_forwarded_not_another_site_s_form(tmp_path):
    # a cross-site <form method=post> needs no preflight: it must not reach the SuperLink
    app, seen = recording_app(tmp_path)
    for media_type in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data"):
        answer = call(app, "POST", "/v1/fleet/get-run", content=b"a=b",
                      headers={**FLOWER_HEADERS, "content-type": media_type})
        assert answer.status_code == 415
    assert call(app, "POST", "/v1/fleet/get-run", content=b"").status_code == 415
    assert not seen
    parameters = {**FLOWER_HEADERS, "content-type": "application/protobuf; charset=binary"}
    answer = call(app, "POST", "/v1/fleet/get-run", content=b"", headers=parameters)
    assert answer.status_code == 200


def test_a_superlink_cannot_serve_a_page_from_the_page_s_origin(tmp_path):
    page = b"<script>indexedDB.open('cola-fed')</script>"
    app, _ = recording_app(tmp_path, lambda r: httpx.Response(
        200, content=page, headers={"content-type": "text/html; charset=utf-8"}))
    answer = call(app, "POST", "/v1/fleet/get-run", content=b"", headers=FLOWER_HEADERS)
    assert answer.content == page  # the bytes pass, as a relay's would
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in answer.headers["content-security-policy"]
    app, _ = recording_app(tmp_path, lambda r: httpx.Response(
        401, content=b'{"detail":"no"}', headers={"content-type": "application/json"}))
    answer = call(app, "POST", "/v1/fleet/get-run", content=b"", headers=FLOWER_HEADERS)
    assert answer.status_code == 401 and answer.headers["content-type"] == "application/json"


def test_a_superlink_answer_past_the_bound_is_not_held(tmp_path):
    from starlette.applications import Starlette
    from starlette.routing import Route

    from cola_fed.federation import page_server

    def streamed(request):
        return httpx.Response(200, stream=httpx.ByteStream(b"x" * 11))  # no content-length

    for handler in (streamed, lambda r: httpx.Response(200, content=b"x" * 11)):
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        forward = page_server.fleet_forwarder(SuperLinkTarget("127.0.0.1:1", insecure=True),
                                              client, max_response_bytes=10)
        app = Starlette(routes=[Route("/v1/fleet/{route}", forward, methods=["POST"])])
        answer = call(app, "POST", "/v1/fleet/pull-messages", content=b"", headers=FLOWER_HEADERS)
        assert answer.status_code == 502 and b"larger than 10 bytes" in answer.content


def test_the_page_is_served_with_its_security_headers(tmp_path):
    app, _ = recording_app(tmp_path)
    page = call(app, "GET", "/")
    assert page.status_code == 200 and "<title>node</title>" in page.text
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    wasm = call(app, "GET", "/ort/x.wasm")
    assert wasm.headers["content-type"] == "application/wasm"  # streaming compilation needs it
    assert call(app, "GET", "/../secrets").status_code == 404


def test_serving_beyond_loopback_needs_tls_and_addresses_are_checked(tmp_path):
    target = SuperLinkTarget("127.0.0.1:9092", insecure=True)
    with pytest.raises(ConfigError, match="loopback"):
        serve(target, host="0.0.0.0", page_dir=page_dir(tmp_path))
    with pytest.raises(ConfigError, match="go together"):
        serve(target, certfile=tmp_path / "c.pem", page_dir=tmp_path)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        page_app(SuperLinkTarget("http://x:1"), page_dir(tmp_path))
    with pytest.raises(ConfigError, match=r"index\.html"):
        page_app(target, tmp_path / "nothing")


@pytest.mark.slow
def test_a_node_serves_a_flower_app_through_the_forwarder(tmp_path):
    """TLS on both sides and SuperNode authentication behind the forwarder: the SuperLink
    verifies every signature the node made, so the headers crossed the relay untouched."""
    assert ECHO_NODE.exists(), f"{ECHO_NODE} is missing: build the JavaScript node (make js)"
    with FlowerProcesses(tmp_path) as procs:
        link = procs.start_superlink(tls=True, node_auth=True)
        key = procs.register_node_key("node-key")
        port = free_port()
        server = procs.start("serve-node", [
            str(BIN / "cola-fed"), "serve-node", "--superlink", link.address,
            "--superlink-root-certificates", str(link.ca), "--port", str(port),
            # the page over TLS too (the test CA's certificate for 127.0.0.1)
            "--ssl-certfile", str(tmp_path / "server.pem"),
            "--ssl-keyfile", str(tmp_path / "server.key"),
            "--page-dir", str(page_dir(tmp_path / "page"))], home="serve-node")
        wait_for_port(port, server)
        node = procs.start("js-node", [
            "node", str(ECHO_NODE), "--superlink", f"127.0.0.1:{port}", "--root-certificates",
            str(link.ca),
            "--auth-supernode-private-key", str(key)], home="js-node")
        node_log = procs.wait_for_log("js-node", "SuperNode ID:", proc=node)
        node_id = int(re.search(r"SuperNode ID: (\d+)", node_log).group(1))
        out = tmp_path / "result.json"
        procs.flwr_run(ROOT / "tests" / "apps" / "fleet_echo", {"out": str(out)})
        assert procs.interrupt(node) == 0, procs.log("js-node")[-3000:]
        assert f"Deactivated node_id={node_id}" in procs.log("superlink")
    result = json.loads(out.read_text())
    assert result["node-id"] == node_id and result["replies"] == 2
    echo = result["echo"]
    assert "error" not in echo, echo
    assert echo["big-equal"] and echo["big-bytes"] > 5 * 2**20  # chunked objects, both ways
    assert echo["config-back"] == echo["config-sent"]


def test_a_page_reached_by_another_host_name_is_refused(tmp_path):
    """DNS rebinding: a site whose name now points at this machine cannot use the forwarder
    (or the page) as its own origin: only the names the page is served by are answered."""
    from starlette.testclient import TestClient

    app = page_app(SuperLinkTarget("127.0.0.1:1", insecure=True), page_dir(tmp_path),
                   allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1:8080") as client:
        assert client.get("/").status_code == 200
        assert client.get("/", headers={"host": "attacker.example"}).status_code == 400
        refused = client.post("/v1/fleet/pull-messages", content=b"",
                              headers={"host": "attacker.example",
                                       "content-type": "application/protobuf"})
        assert refused.status_code == 400
