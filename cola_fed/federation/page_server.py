"""`cola-fed serve-node`: the browser node's page, and Flower's Fleet API on the same origin.

Flower's SuperLink sends no CORS headers, and the node-authentication headers of every Fleet
call (``flwr-public-key``, ``flwr-timestamp``, ``flwr-signature``) force a CORS preflight, so a
page cannot call a SuperLink on another origin. This server serves the page's static files
(``js/packages/browser/dist-web``) and forwards ``POST /v1/fleet/<route>`` to the SuperLink.

The forwarder is a plain relay and adds nothing a relay could not already do: it passes the
request body and Flower's own headers (authentication, runtime version, media type) through
unchanged, and the SuperLink's status, body and media type back; it adds no header of its own
(no ``X-Forwarded-For``, no credentials) and keeps nothing. It forwards only protobuf calls (not a
form another site's page could post here), bounds the SuperLink's answer as it bounds requests,
and never lets an answer act as a page of this origin (only protobuf and JSON media types pass;
every answer is ``nosniff`` and sandboxed). The node still signs every call with
its own key and seals every payload for the server, so the relay learns what any network hop
between a SuperNode and its SuperLink learns. Only Flower's twelve Fleet routes are forwarded,
and request bodies are bounded before they are read whole.

It listens on loopback by default. WebCrypto works only in a secure context (``https://``, or
``http://localhost``/``127.0.0.1``), so a page served to other machines needs TLS: pass
``--ssl-certfile``/``--ssl-keyfile`` (or put a TLS-terminating proxy in front and keep this on
loopback); the server refuses a non-loopback address without them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import mimetypes
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from cola_fed.errors import ConfigError

# Flower 1.42's Fleet routes (flwr/superlink/routers/fleet/router.py)
FLEET_ROUTES = frozenset({
    "register-node", "activate-node", "deactivate-node", "unregister-node",
    "send-node-heartbeat", "pull-messages", "push-messages", "get-run", "get-fab",
    "push-object", "pull-object", "confirm-message-received",
})
# the request headers Flower's SuperNode sends and the SuperLink reads; nothing else goes on
PASSED_REQUEST_HEADERS = (
    "content-type", "accept", "flwr-public-key", "flwr-timestamp", "flwr-signature",
    "flwr-package-name", "flwr-package-version", "flwr-component-name",
)
PASSED_RESPONSE_HEADERS = ("content-type",)
# what a Fleet call carries (Flower's SuperNode and the page send protobuf): anything else, such
# as a form another site's page posts here (no preflight), is not forwarded
FLEET_REQUEST_MEDIA_TYPE = "application/protobuf"
# what a SuperLink answers with (protobuf, FastAPI's JSON errors); another media type is sent on
# as opaque bytes, so that a SuperLink cannot serve HTML or script from the page's origin
PASSED_RESPONSE_MEDIA_TYPES = frozenset({"application/protobuf", "application/json"})
# on every forwarded answer: never sniffed, and sandboxed should a browser render it anyway
FORWARDED_ANSWER_HEADERS = {
    "x-content-type-options": "nosniff",
    "content-security-policy": "default-src 'none'; sandbox",
}
# a pushed object is at most one 5 MiB array chunk plus its header; Flower's own bodies are
# smaller than this bound, which stops a page (or anyone on loopback) from streaming gigabytes
MAX_REQUEST_BYTES = 64 * 1024 * 1024
# the SuperLink is not trusted either: its answer is bounded before it is held whole (the node's
# own transport refuses answers past 64 MiB too)
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
DEFAULT_PAGE_DIR = Path(__file__).resolve().parents[2] / "js" / "packages" / "browser" / "dist-web"
# the page loads only its own files; WebAssembly needs 'wasm-unsafe-eval' to compile
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; "
    "style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")


@dataclass(frozen=True)
class SuperLinkTarget:
    """Where the Fleet API is: ``HOST:PORT``, over TLS verified with ``root_certificates``
    (a CA file; None: the system's roots) unless ``insecure``."""

    address: str
    insecure: bool = False
    root_certificates: Path | None = None

    @property
    def base_url(self) -> str:
        if "://" in self.address or ":" not in self.address:
            raise ConfigError(f"--superlink {self.address!r}: expected HOST:PORT (the Fleet API's "
                              "address, as flower-supernode takes it)")
        return f"{'http' if self.insecure else 'https'}://{self.address}"

    def verify(self) -> ssl.SSLContext | bool:
        if self.insecure:
            if self.root_certificates is not None:
                raise ConfigError("--superlink-root-certificates makes no sense with --insecure")
            return False
        if self.root_certificates is None:
            return True
        return ssl.create_default_context(cafile=str(self.root_certificates))


class _BodyTooLarge(Exception):
    pass


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


async def _bounded_answer(http: httpx.AsyncClient, url: str, body: bytes,
                          headers: dict[str, str], limit: int) -> tuple[httpx.Response, bytes]:
    # identity: no compressed answer to unfold past the bound (httpx would ask for gzip)
    headers = {**headers, "accept-encoding": "identity"}
    async with http.stream("POST", url, content=body, headers=headers) as answer:
        declared = answer.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise _BodyTooLarge
        chunks, size = [], 0
        async for chunk in answer.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
        return answer, b"".join(chunks)


def fleet_forwarder(target: SuperLinkTarget, client: httpx.AsyncClient | None = None,
                    max_request_bytes: int = MAX_REQUEST_BYTES,
                    max_response_bytes: int = MAX_RESPONSE_BYTES):
    """The ``POST /v1/fleet/{route}`` endpoint: the request relayed to the SuperLink as it came
    (Flower's headers and the body), the SuperLink's answer relayed back as it came."""
    base = target.base_url
    http = client or httpx.AsyncClient(verify=target.verify(), timeout=httpx.Timeout(60.0),
                                       follow_redirects=False, trust_env=False)

    async def forward(request: Request) -> Response:
        route = request.path_params["route"]
        if route not in FLEET_ROUTES:
            return Response(f"not a Fleet route: {route[:80]}\n", status_code=404,
                            media_type="text/plain")
        if _media_type(request.headers.get("content-type")) != FLEET_REQUEST_MEDIA_TYPE:
            return Response(f"a Fleet call carries {FLEET_REQUEST_MEDIA_TYPE}\n", status_code=415,
                            media_type="text/plain")
        try:
            body = await _bounded_body(request, max_request_bytes)
        except _BodyTooLarge:
            return Response(f"request body larger than {max_request_bytes} bytes\n",
                            status_code=413, media_type="text/plain")
        headers = {name: request.headers[name] for name in PASSED_REQUEST_HEADERS
                   if name in request.headers}
        try:
            answer, content = await _bounded_answer(http, f"{base}/v1/fleet/{route}", body,
                                                    headers, max_response_bytes)
        except httpx.TransportError as err:
            # the node's transport retries a 502, as Flower's SuperNode retries behind a proxy
            return Response(f"the SuperLink could not be reached: {type(err).__name__}\n",
                            status_code=502, media_type="text/plain")
        except _BodyTooLarge:
            return Response(f"the SuperLink's answer is larger than {max_response_bytes} bytes\n",
                            status_code=502, media_type="text/plain")
        passed = {name: answer.headers[name] for name in PASSED_RESPONSE_HEADERS
                  if name in answer.headers}
        media_type = passed.get("content-type")
        if media_type is not None and _media_type(media_type) not in PASSED_RESPONSE_MEDIA_TYPES:
            passed["content-type"] = "application/octet-stream"
        return Response(content, status_code=answer.status_code,
                        headers={**passed, **FORWARDED_ANSWER_HEADERS})

    forward.client = http  # type: ignore[attr-defined]  # closed with the app
    return forward


class _PageHeaders:
    """Security headers on the page's static files (the Fleet answers go back untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-cache"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def page_app(target: SuperLinkTarget, page_dir: Path = DEFAULT_PAGE_DIR,
             client: httpx.AsyncClient | None = None,
             allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app: the Fleet forwarder under ``/v1/fleet/`` and the page's files at ``/``.

    ``allowed_hosts``: the names the page may be reached by (the ``Host`` header); any other is
    refused with 400, so that a site that rebinds its DNS name to this machine cannot use the
    forwarder as a same-origin relay. None: no check (tests with their own client)."""
    page_dir = Path(page_dir)
    if not (page_dir / "index.html").is_file():
        raise ConfigError(f"no page in {page_dir} (index.html missing): build it with "
                          "`make js` (or `cd js && npm run build`)")
    forward = fleet_forwarder(target, client)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await forward.client.aclose()

    middleware = [] if allowed_hosts is None else [
        Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)]
    return Starlette(routes=[
        Route("/v1/fleet/{route}", forward, methods=["POST"]),
        Mount("/", app=_PageHeaders(StaticFiles(directory=page_dir, html=True))),
    ], lifespan=lifespan, middleware=middleware)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(target: SuperLinkTarget, *, host: str = "127.0.0.1", port: int = 8080,
          page_dir: Path = DEFAULT_PAGE_DIR, certfile: Path | None = None,
          keyfile: Path | None = None, allowed_hosts: list[str] | None = None) -> None:
    """Serve the page and the forwarder until interrupted (uvicorn). ``allowed_hosts``: the
    names browsers reach the page by (default: ``host``, and the loopback names when it is a
    loopback address); a request naming another ``Host`` is refused."""
    import logging

    import uvicorn

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded call

    if (certfile is None) != (keyfile is None):
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together")
    if certfile is None and not is_loopback(host):
        raise ConfigError(f"--host {host} is not a loopback address: browsers give WebCrypto "
                          "only to https pages (and http://localhost), so serve it with "
                          "--ssl-certfile/--ssl-keyfile, or keep it on loopback behind a TLS proxy")
    if not allowed_hosts:
        allowed_hosts = [host, *(["localhost", "127.0.0.1", "::1"] if is_loopback(host) else [])]
    app = page_app(target, page_dir, allowed_hosts=allowed_hosts)
    scheme = "http" if certfile is None else "https"
    print(f"cola-fed node page: {scheme}://{host}:{port}/ (Fleet API forwarded to "
          f"{target.base_url})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning",
                ssl_certfile=str(certfile) if certfile else None,
                ssl_keyfile=str(keyfile) if keyfile else None,
                proxy_headers=False, server_header=False, date_header=False)
