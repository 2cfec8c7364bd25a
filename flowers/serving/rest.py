"""TF Serving's REST API on aiohttp: model status, metadata, predict, classify and regress.

Paths, JSON shapes, error bodies (`{"error": "..."}`) and status codes follow
tensorflow_serving/model_servers/http_rest_api_handler.cc, http_rest_api_util.cc
and http_server.cc.
"""
import asyncio
import json
import logging
import re
import time

from aiohttp import web
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from flowers.serving import inference, json_examples, json_tensor
from flowers.serving.errors import Code, ServingError, invalid

log = logging.getLogger(__name__)

# http_rest_api_util.cc kPredictionApiGegex / kModelStatusApiRegex
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
# JSON bodies above this are parsed off the event loop.
LARGE_BODY = 256 * 1024


def _json_response(status, obj):
    return web.Response(status=status, text=json.dumps(obj, indent=1), content_type="application/json")


def _version(text):
    """A version from the URL; like TF Serving's SimpleAtoi into an int64."""
    if text is None:
        return None
    if not text.isdigit() or int(text) >= 2**63:
        raise invalid(f"Failed to convert version: {text} to numeric.")
    return int(text)


class RestApi:
    def __init__(self, manager, metrics=None, timeout_s=None):
        self.manager, self.metrics, self.timeout_s = manager, metrics, timeout_s

    async def handle(self, request):
        started, model, api, status = time.monotonic(), "", "unknown", Code.OK
        try:
            path = request.rel_url.raw_path  # matched before percent-decoding, as TF Serving's regexes
            if request.method == "POST" and (m := PREDICT_PATH.fullmatch(path)):
                model, version, label, method = m[1], _version(m[2]), m[3], m[4].lower()
                api = method
                body = await self._infer(request, model, version, label, method)
            elif request.method == "GET" and (m := STATUS_PATH.fullmatch(path)):
                model, version, label = m[1] or "", _version(m[2]), m[3]
                api = "metadata" if m[4] else "status"
                if m[4]:
                    body = _metadata_json(self.manager.metadata(model, version, label))
                else:
                    body = json_format.MessageToDict(self.manager.status(model, version, label),
                                                     always_print_fields_with_no_presence=True)
            else:
                raise invalid(f"Malformed request: {request.method} {path}")
            return _json_response(200, body)
        except ServingError as e:
            status = e.code
            return _json_response(e.http_status, {"error": e.message})
        except asyncio.CancelledError:
            status = Code.CANCELLED
            raise
        except Exception as e:  # noqa: BLE001 - a bug here must not take the server down
            log.exception("%s %s failed", request.method, request.path)
            status = Code.INTERNAL
            return _json_response(500, {"error": f"{type(e).__name__}: {e}"})
        finally:
            if self.metrics:
                self.metrics.observe(model, api, "REST", status.name, time.monotonic() - started)

    async def _infer(self, request, model, version, label, method):
        if version is not None and label:
            raise invalid(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ServingError(Code.RESOURCE_EXHAUSTED,
                               f"Request body is larger than the limit of {request.app['max_request_bytes']} bytes",
                               http_status=413) from None
        if len(body) > LARGE_BODY:
            doc = await asyncio.get_running_loop().run_in_executor(None, json_tensor.parse, body)
        else:
            doc = json_tensor.parse(body)
        servable = self.manager.resolve(model, version, label)
        signature = servable.signature(doc.get("signature_name", ""))
        if method == "predict":
            inputs, fmt = json_tensor.to_arrays(doc, signature.inputs)
            outputs = await self._deadline(self.manager.predict(servable, signature, inputs))
            return json_tensor.to_json(outputs, fmt)
        method = inference.CLASSIFY if method == "classify" else inference.REGRESS
        result = await self._deadline(inference.run(self.manager, servable, signature, method,
                                                    json_examples.to_input(doc)))
        return json_examples.to_json(result)

    async def _deadline(self, work):
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except TimeoutError:
            raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline exceeded") from None


def _metadata_json(response):
    """GetModelMetadataResponse -> TF Serving's REST shape, with the Any unpacked (http_rest_api_util.cc)."""
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    opts = dict(always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
    return {"model_spec": json_format.MessageToDict(response.model_spec, **opts),
            "metadata": {"signature_def": json_format.MessageToDict(sig_map, **opts)}}


def make_app(manager, *, metrics=None, metrics_path=None, max_request_bytes=32 << 20, timeout_s=None):
    api = RestApi(manager, metrics, timeout_s)
    app = web.Application(client_max_size=max_request_bytes)
    app["max_request_bytes"] = max_request_bytes
    if metrics is not None and metrics_path:
        async def prometheus(_request):
            page, content_type = metrics.page()
            return web.Response(body=page, headers={"Content-Type": content_type})
        app.router.add_get(metrics_path, prometheus)
    app.router.add_route("*", "/v1/{tail:.*}", api.handle)
    app.router.add_route("*", "/V1/{tail:.*}", api.handle)
    return app
