"""The HTTP routes and handlers: KServe v2 REST and TensorFlow Serving REST on aiohttp (the listening site
is bnserve.server.http_site), in the gRPC server's process
and event loop, through the same data plane (validation, batcher, statistics, metrics) and the same
repository controller.

Why aiohttp: it runs inside the event loop grpc.aio already owns (no second loop, no signal handling of
its own) and brings what a public endpoint needs without hand-written code: a request body cap
(``client_max_size``), Content-Encoding decoding, response compression, TLS and graceful shutdown. The
measurement behind the choice is in bench/http_library.py and the README.

Errors are JSON ``{"error": "..."}`` with the data plane's message; the status comes from the error
(``ServingError.http_status``): 400 bad request, 404 unknown model or version, 401 without a valid token,
413 body over --max-message-bytes, 503 shutting down or queue full, 500 only for the server's own faults.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from bnserve.server import rest_tfserving, rest_v2
from bnserve.server.auth import BearerToken
from bnserve.server.controller import RepositoryController
from bnserve.server.dataplane import DataPlane
from bnserve.server.errors import (
    BodyTimeout,
    BodyTooLarge,
    ErrorLogLimiter,
    InvalidInput,
    ServingError,
    Unimplemented,
)
from bnserve.server.json_codec import expect, message_json, parse_json
from bnserve.server.json_offload import SEPARATOR_SLACK, JsonDecoder
from bnserve.server.rest_v2 import HEADER_LENGTH
from bnserve.server.settings import ServerSettings
from bnserve.server.tfserving_documents import ranked_classes
from bnserve.server.tracing import traced
from bnserve.server.triton_documents import to_model_config, to_model_statistics

log = logging.getLogger("bnserve.server")
limiter = ErrorLogLimiter()

JSON = "application/json"
LINGERING_SECONDS = 2.0
BINARY = "application/octet-stream"
HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready")
ACCEPTED_BODY_TYPES = ("", JSON, BINARY, "application/x-www-form-urlencoded")
"""Content types an infer / predict body may declare. None (as tritonclient.http sends) means JSON; so does
curl's default for ``-d``, which TensorFlow Serving's own REST examples rely on."""


def json_response(document, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(document, separators=(",", ":")).encode(), status=status, content_type=JSON
    )


def error_response(status: int, message: str, headers: dict | None = None) -> web.Response:
    response = json_response({"error": message}, status)
    if headers:
        response.headers.update(headers)
    return response


class HttpFront:
    """The routes and their handlers; one per server process."""

    def __init__(
        self, dataplane: DataPlane, controller: RepositoryController, settings: ServerSettings
    ):
        self.dataplane = dataplane
        self.controller = controller
        self.settings = settings
        self._token = BearerToken(settings.auth_token) if settings.auth_token else None
        self._open_paths = HEALTH_PATHS if settings.health_without_auth else ()
        self.json = JsonDecoder()

    def application(self) -> web.Application:
        app = web.Application(
            middlewares=[self.guard],
            client_max_size=self.settings.max_message_bytes,
            # lingering_time: after an early answer (413, 408) aiohttp keeps reading the unread body this long
            # so that the client sees the answer rather than a reset; its default, 10 s, would let a client
            # that never finishes hold the connection that much longer.
            handler_args={"max_field_size": 16384, "lingering_time": LINGERING_SECONDS},
        )
        app.on_cleanup.append(self.close)
        add = app.router.add_route
        # The v2 routes. /v2/models/stats is listed before /v2/models/{model}: routes match in order.
        add("GET", "/", self.status_page)
        add("GET", "/v2", self.server_metadata)
        add("GET", "/v2/health/live", self.live)
        add("GET", "/v2/health/ready", self.ready)
        add("GET", "/v2/models/stats", self.model_statistics)
        add("POST", "/v2/repository/index", self.repository_index)
        add("POST", "/v2/repository/models/{model}/load", self.load)
        add("POST", "/v2/repository/models/{model}/unload", self.unload)
        # Infer and predict come first among the routes that share their prefix: aiohttp tries those in order,
        # and nearly every request is one.
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            add("POST", prefix + "/infer", self.infer)
            add("GET", prefix, self.model_metadata)
            add("GET", prefix + "/ready", self.model_ready)
            add("GET", prefix + "/config", self.model_config)
            add("GET", prefix + "/stats", self.model_statistics)
            add("GET", prefix + "/drift", self.drift)
        # TensorFlow Serving: GET status / metadata, POST NAME[/versions/V|/labels/L]:predict.
        for prefix in (
            "/v1/models/{model:[^/:]+}",
            "/v1/models/{model:[^/:]+}/versions/{version:[^/:]+}",
            "/v1/models/{model:[^/:]+}/labels/{label:[^/:]+}",
        ):
            add("POST", prefix + ":{method}", self.tf_predict)
            add("GET", prefix, self.tf_status)
            add("GET", prefix + "/metadata", self.tf_metadata)
        return app

    async def close(self, app: web.Application) -> None:
        self.json.close()

    # -- cross-cutting: authentication, and every error as JSON with its status ------------------------------

    @web.middleware
    async def guard(self, request: web.Request, handler):
        if self._token is not None and request.path not in self._open_paths:
            refusal = self._token.refusal(
                request.headers.get("Authorization"), "Authorization", "header"
            )
            if refusal is not None:
                return error_response(401, refusal, {"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except ServingError as exc:
            limiter.log(f"HTTP {request.method} {request.path}", exc.code, exc.message)
            response = error_response(exc.http_status, exc.message)
            if isinstance(
                exc, BodyTimeout
            ):  # the rest of the body may still come: no next request here
                response.force_close()
            return response
        except web.HTTPRequestEntityTooLarge:
            response = error_response(
                413, f"body: more than --max-message-bytes {self.settings.max_message_bytes} bytes"
            )
            response.force_close()  # the rest of the body is not read: this connection cannot carry another request
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 404:
                # The path as sent: /v2/health%2Fready is not /v2/health/ready, whatever it decodes to.
                message = f"no such endpoint: {request.method} {request.raw_path.split('?')[0]}"
            elif exc.status == 405:
                message = f"{request.method} is not allowed on {request.path}; expected {exc.headers.get('Allow')}"
            else:
                message = exc.text or exc.reason
            return error_response(exc.status, message)
        except (
            HttpProcessingError,
            RequestPayloadError,
        ) as exc:  # e.g. a Content-Encoding that does not decode
            reason = " ".join(str(exc).replace("400, message:", "").split())
            response = error_response(400, f"body: cannot be read ({reason})")
            response.force_close()  # the body stream is broken: say so, rather than reset the next request
            return response
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("HTTP %s %s failed", request.method, request.path)
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    async def body(self, request: web.Request) -> bytes:
        """The request body, refused before reading when its declared size or content type is wrong."""
        if (
            request.content_length is not None
            and request.content_length > self.settings.max_message_bytes
        ):
            raise web.HTTPRequestEntityTooLarge(
                max_size=self.settings.max_message_bytes, actual_size=request.content_length
            )
        json_body = HEADER_LENGTH not in request.headers
        if json_body and (request.content_length or 0) > self.settings.max_json_bytes:
            raise self.json_too_large(request.content_length)
        declared = request.headers.get("Content-Type", "")
        # The exact header first: parsing it (request.content_type) is only needed when it has parameters.
        if declared not in ACCEPTED_BODY_TYPES and request.content_type not in ACCEPTED_BODY_TYPES:
            raise InvalidInput(
                f"Content-Type: got {declared!r}, expected {JSON} (or {BINARY} with "
                f"{HEADER_LENGTH})"
            )
        if request.content.is_eof():
            # Arrived whole (the usual case): read without arming --body-seconds, whose timer (a heap push,
            # then a cancellation) cost 6% of the loop's time per HTTP infer at concurrency 32.
            body = await request.read()
        else:
            try:
                # asyncio.timeout rather than wait_for: no task of its own, so the parts that have arrived are
                # read without a trip through the event loop.
                async with asyncio.timeout(self.settings.body_seconds):
                    body = await request.read()
            except TimeoutError:
                raise BodyTimeout(
                    f"body: not received whole within --body-seconds {self.settings.body_seconds:g}"
                ) from None
        if (
            json_body and len(body) > self.settings.max_json_bytes
        ):  # chunked: no length was declared
            raise self.json_too_large(len(body))
        return body

    def separator_limit(self, size: int, name: str, version: str) -> int | None:
        """DataPlane.json_separator_limit, or None for a JSON part of at most SEPARATOR_SLACK bytes: every
        limit is at least SEPARATOR_SLACK separators and such a part holds fewer, so none is looked up."""
        if size <= SEPARATOR_SLACK:
            return None
        return self.dataplane.json_separator_limit(name, version)

    def json_too_large(self, size: int) -> BodyTooLarge:
        return BodyTooLarge(
            f"body: {size} bytes of JSON, more than --max-json-bytes {self.settings.max_json_bytes}; "
            f"send tensors in binary ({HEADER_LENGTH}, up to --max-message-bytes "
            f"{self.settings.max_message_bytes})"
        )

    async def status_page(self, request):
        from bnserve.server.status_page import render

        return web.Response(text=render(self.dataplane), content_type="text/html")

    # -- KServe v2 --------------------------------------------------------------------------------------

    async def server_metadata(self, request):
        name, version, extensions = self.dataplane.server_metadata()
        return json_response({"name": name, "version": version, "extensions": list(extensions)})

    async def live(self, request):
        return json_response({"live": True})

    async def ready(self, request):
        ready = self.dataplane.server_ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def model_metadata(self, request):
        metadata = self.dataplane.model_metadata(
            request.match_info["model"], request.match_info.get("version", "")
        )
        return json_response(
            {
                "name": metadata.name,
                "versions": list(metadata.versions),
                "platform": metadata.platform,
                "inputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": t.shape}
                    for t in metadata.inputs
                ],
                "outputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": t.shape}
                    for t in metadata.outputs
                ],
            }
        )

    async def model_ready(self, request):
        name, version = request.match_info["model"], request.match_info.get("version", "")
        ready = self.dataplane.model_ready(name, version)
        return json_response({"name": name, "ready": ready}, 200 if ready else 503)

    @traced("http")
    async def infer(self, request: web.Request):
        name, version = request.match_info["model"], request.match_info.get("version", "")
        with self.dataplane.admission(
            name, version, "http"
        ):  # refused while draining, before the body is read
            body = await self.body(request)
            header_length = request.headers.get(HEADER_LENGTH)
            # With the binary extension the JSON is only the header: the tensors are viewed, not parsed.
            size = int(header_length) if (header_length or "").isdigit() else len(body)
            domain, encoding = await self.json.decode(
                size,
                self.separator_limit(size, name, version),
                rest_v2.parse_infer,
                body,
                header_length,
                name,
                version,
            )
        answer = await self.dataplane.infer(domain, "http")
        content, header_length = rest_v2.encode_infer(answer, encoding)
        if header_length is None:
            response = web.Response(body=content, content_type=JSON)
        else:
            response = web.Response(
                body=content, content_type=BINARY, headers={HEADER_LENGTH: str(header_length)}
            )
        if "gzip" in request.headers.get("Accept-Encoding", "") or "deflate" in request.headers.get(
            "Accept-Encoding", ""
        ):
            response.enable_compression()
        return response

    async def model_config(self, request):
        model = self.dataplane.model(
            request.match_info["model"], request.match_info.get("version", "")
        )
        return json_response(message_json(to_model_config(model, self.settings)))

    async def model_statistics(self, request):
        models = self.dataplane.statistics_of(
            request.match_info.get("model", ""), request.match_info.get("version", "")
        )
        return json_response(
            {"model_stats": [message_json(to_model_statistics(m)) for m in models]}
        )

    async def drift(self, request):
        status = self.dataplane.drift(
            request.match_info["model"], request.match_info.get("version", "")
        )
        return json_response(status.to_json())

    async def repository_index(self, request):
        body = await self.body(request)
        document = parse_json(body) if body.strip() else {}
        expect(document, dict, "body", 'a JSON object such as {"ready": true}')
        ready_only = expect(document.get("ready", False), bool, "ready", "true or false")
        states = self.dataplane.index(ready_only)
        return json_response(
            [
                {
                    "name": s.name,
                    **({"version": str(s.version)} if s.version else {}),
                    "state": s.state,
                    "reason": s.reason,
                }
                for s in states
            ]
        )

    async def load(self, request):
        await self.controller.load(request.match_info["model"])
        return json_response({})

    async def unload(self, request):
        await self.controller.unload(request.match_info["model"])
        return json_response({})

    # -- TensorFlow Serving -----------------------------------------------------------------------------

    @staticmethod
    def tf_version(request) -> str:
        if "label" in request.match_info:
            raise rest_tfserving.label_refused(request.match_info["label"])
        return request.match_info.get("version", "")

    async def tf_status(self, request):
        statuses = self.dataplane.tf_model_status(
            request.match_info["model"], self.tf_version(request)
        )
        return json_response(rest_tfserving.status_json(statuses))

    async def tf_metadata(self, request):
        model = self.dataplane.model(request.match_info["model"], self.tf_version(request))
        return json_response(rest_tfserving.metadata_json(model))

    @traced("http")
    async def tf_predict(self, request: web.Request):
        name = request.match_info["model"]
        method = request.match_info["method"]
        with self.dataplane.admission(name, request.match_info.get("version", ""), "http"):
            if method == "regress":
                raise Unimplemented(
                    ":regress: bnserve serves classifiers (logits and probabilities over class "
                    "labels); use :classify or :predict"
                )
            if method not in ("predict", "classify"):
                raise InvalidInput(f":{method}: not served; expected :predict or :classify")
            version = self.tf_version(request)
            model = self.dataplane.model(name, version)
            body = await self.body(request)
            limit = self.separator_limit(len(body), name, version)
            if method == "classify":
                domain = await self.json.decode(
                    len(body),
                    limit,
                    rest_tfserving.parse_classify,
                    body,
                    model.name,
                    model.input,
                    version,
                )
            else:
                domain, row_format = await self.json.decode(
                    len(body),
                    limit,
                    rest_tfserving.parse_predict,
                    body,
                    model.name,
                    model.input,
                    version,
                )
        answer = await self.dataplane.infer(domain, "http")
        if method == "classify":
            ranked = ranked_classes(answer.outputs[0].data, model.manifest.class_labels)
            return json_response(rest_tfserving.encode_classify(ranked))
        return web.Response(body=rest_tfserving.predict_body(answer, row_format), content_type=JSON)
