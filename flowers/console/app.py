"""`flowers console`: a small web page over TF Serving's REST API (or `flowers serve`).

    flowers console --server http://HOST:8501 [--model flowers] [--model_config_file PATH]
                    [--port 8080] [--host 127.0.0.1]

Try it (photos -> top-5 from a label or version, canary beside stable), Evaluate (each version's
eval files from its assets.extra/, found through models.config's base path) and Versions (the
server's view beside the config's). Read-only: it never changes what is served. Eval photos are
served only as the uris listed in that version's eval_predictions.jsonl, by index.
"""
import asyncio
import pathlib
import sys

import aiohttp
from aiohttp import web

from flowers import cli
from flowers.console import sources
from flowers.core import defaults, images
from flowers.core.rejection import Rejection
from flowers.predict import client as predict_client
from flowers.train import report

STATIC = pathlib.Path(__file__).with_name("static")
MAX_PHOTO_BYTES = 10 << 20  # per uploaded photo
MAX_PHOTOS = 32  # per upload
TOP_K = 5
GALLERY_THUMBNAIL = 160  # px
UPSTREAM_TIMEOUT_S = 60
SETTINGS = web.AppKey("settings", dict)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def _error(status, message):
    return web.json_response({"error": message}, status=status)


async def _upstream(app, path, body=None):
    """(HTTP status, JSON) from the model server; (502, {"error"}) when it cannot be reached."""
    url = app[SETTINGS]["server"] + path
    try:
        method = app[SESSION].get(url) if body is None else app[SESSION].post(url, json=body)
        async with method as response:
            try:
                return response.status, await response.json(content_type=None)
            except ValueError:
                return response.status, {"error": (await response.text())[:500]}
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return 502, {"error": f"model server {app[SETTINGS]['server']} unreachable: {e or type(e).__name__}"}


def _path(app, version=None, label=None):
    # The one REST path builder, the prediction client's.
    return app[SETTINGS]["client"]._path(app[SETTINGS]["model"], version, label)


async def _state(app):
    """Everything the pages show about versions: server, config, folders, targets."""
    settings = app[SETTINGS]
    status, body = await _upstream(app, _path(app))
    server_versions = {int(v["version"]): v for v in body.get("model_version_status", [])} if status == 200 else {}
    config = await asyncio.to_thread(sources.read_config, settings["model_config_file"], settings["model"])
    folders = await asyncio.to_thread(sources.version_folders, config)
    policy = sources.served_by_policy(config, folders)
    config_labels = (config or {}).get("labels", {})
    server_labels = {}
    for label in config_labels:  # what the server resolves each label to (GetModelStatus by label)
        s, b = await _upstream(app, _path(app, label=label))
        server_labels[label] = int(b["model_version_status"][0]["version"]) if s == 200 else b.get("error")
    versions = []
    for version in sorted(set(server_versions) | set(folders), reverse=True):
        folder = folders.get(version)
        info = await asyncio.to_thread(
            lambda: (sources.accuracy(folder), sources.created(folder)) if folder else (None, None))
        served = server_versions.get(version, {})
        versions.append({
            "version": version, "state": served.get("state", "not loaded"),
            "error": served.get("status", {}).get("error_message", ""),
            "labels": sorted(k for k, v in config_labels.items() if v == version),
            "server_labels": sorted(k for k, v in server_labels.items() if v == version),
            "in_policy": version in policy, "on_disk": folder is not None,
            "accuracy": info[0], "created": info[1]})
    targets = [{"id": f"label:{k}", "text": f"{k} (version {v})", "version": v}
               for k, v in sorted(server_labels.items()) if isinstance(v, int)]
    targets += [{"id": f"version:{v}", "text": f"version {v}", "version": v}
                for v, s in sorted(server_versions.items(), reverse=True) if s.get("state") == "AVAILABLE"]
    ids = [t["id"] for t in targets]
    stable, canary = f"label:{defaults.STABLE}", f"label:{defaults.CANARY}"
    public_config = {k: v for k, v in (config or {}).items() if not k.startswith("_")} or None
    return {"model": settings["model"], "server": settings["server"],
            "server_error": None if status == 200 else body.get("error", f"HTTP {status}"),
            "config": public_config, "server_labels": server_labels, "versions": versions, "targets": targets,
            "default": stable if stable in ids else (ids[0] if ids else None),
            "canary": canary if canary in ids else None}, folders


async def models_handler(request):
    state, _ = await _state(request.app)
    return web.json_response(state)


def _parse_target(text):
    kind, _, value = (text or "").partition(":")
    if kind == "label" and value:
        return None, value
    if kind == "version" and value.isdigit():
        return int(value), None
    if not text:
        return None, None
    raise ValueError(f"unknown target {text!r}: use label:NAME or version:N")


async def _read_uploads(request):
    """[(filename, bytes or None, error or None)] from a multipart form, each photo size-capped."""
    if request.content_type != "multipart/form-data":
        raise ValueError("send the photos as multipart/form-data (form field 'photos')")
    reader = await request.multipart()
    uploads = []
    while (part := await reader.next()) is not None:
        if part.name != "photos":
            await part.release()
            continue
        name, data, size = part.filename or f"photo {len(uploads) + 1}", bytearray(), 0
        while chunk := await part.read_chunk(1 << 16):
            size += len(chunk)
            if size <= MAX_PHOTO_BYTES:
                data += chunk
        if size > MAX_PHOTO_BYTES:
            uploads.append((name, None, f"too large: {size / 1e6:.1f} MB, the limit is {MAX_PHOTO_BYTES >> 20} MB"))
        else:
            uploads.append((name, bytes(data), None))
    return uploads


def _top(row, labels):
    scores = row.get("scores") or []
    if labels and len(labels) == len(scores):
        ranked = sorted(zip(labels, scores), key=lambda p: -p[1])[:TOP_K]
        return [{"label": label, "score": float(score)} for label, score in ranked]
    # labels unknown (no metrics.json): the served top label only
    return [{"label": row.get("label"), "score": float(max(scores)) if scores else None}]


async def _predict_one(app, name, data, error, version, label, labels):
    if error:
        return {"name": name, "error": error}
    try:
        images.probe(data)
    except Rejection as e:
        return {"name": name, "error": f"not an image we can read: {e}"}
    body = predict_client.request_body([data], [name])
    status, answer = await _upstream(app, _path(app, version, label) + ":predict", body)
    if status != 200:
        return {"name": name, "error": f"the model server said: {answer.get('error', status)}"}
    return {"name": name, "top": _top(answer["predictions"][0], labels)}


async def predict_handler(request):
    app = request.app
    try:
        version, label = _parse_target(request.query.get("target", ""))
        uploads = await _read_uploads(request)
    except ValueError as e:
        return _error(400, str(e))
    if not uploads:
        return _error(400, "no photos in the upload (form field 'photos')")
    if len(uploads) > MAX_PHOTOS:
        return _error(400, f"{len(uploads)} photos: at most {MAX_PHOTOS} per upload")
    state, folders = await _state(app)
    if label is not None:
        version_of = state["server_labels"].get(label)
        if not isinstance(version_of, int):
            return _error(400, f"the server does not know label {label!r}: {version_of}")
    else:
        version_of = version
    labels = await asyncio.to_thread(sources.labels_of, folders[version_of]) if version_of in folders else None
    results = await asyncio.gather(*[_predict_one(app, *upload, version, label, labels) for upload in uploads])
    return web.json_response({"target": request.query.get("target", ""), "version": version_of, "results": results})


async def _evaluation(request):
    """(folder, metrics, predictions) of the version in the URL, or an HTTP error."""
    settings = request.app[SETTINGS]
    try:
        version = int(request.match_info["version"])
    except ValueError:
        raise web.HTTPNotFound(text="no such version") from None
    config = await asyncio.to_thread(sources.read_config, settings["model_config_file"], settings["model"])
    folder = (await asyncio.to_thread(sources.version_folders, config)).get(version)
    if folder is None:
        raise web.HTTPNotFound(text=f"version {version} is not under the config's base path "
                                    "(start the console with --model_config_file)")
    try:
        metrics, predictions = await asyncio.to_thread(sources.evaluation, folder)
    except Exception as e:  # noqa: BLE001 - missing or unreadable eval files
        raise web.HTTPNotFound(text=f"version {version} has no readable evaluation: {e}") from None
    return folder, metrics, predictions


async def eval_handler(request):
    try:
        folder, metrics, predictions = await _evaluation(request)
    except web.HTTPNotFound as e:
        return _error(404, e.text)
    labels = metrics.get("labels") or metrics["confusion_matrix"]["labels"]
    keep = ("accuracy", "loss", "train_accuracy", "steps", "backbone", "labels", "per_class", "confusion_matrix",
            "history", "n_eval", "version")
    rows = [{"labels": p["labels"], "predicted": p["predicted"], "score": report.top_score(p, labels),
             "name": p["uri"].rsplit("/", 1)[-1]} for p in predictions]
    has_report = await asyncio.to_thread(sources.report_path, folder) is not None
    return web.json_response({"version": int(request.match_info["version"]), "labels": labels,
                              "metrics": {k: metrics[k] for k in keep if k in metrics},
                              "predictions": rows, "report": has_report})


async def photo_handler(request):
    """An eval photo's thumbnail, by its index in that version's eval_predictions.jsonl only."""
    _, _, predictions = await _evaluation(request)
    index = request.match_info["index"]
    if not index.isdigit() or int(index) >= len(predictions):
        raise web.HTTPNotFound(text="no such eval photo")
    data = await asyncio.to_thread(report.thumbnail, predictions[int(index)]["uri"], GALLERY_THUMBNAIL)
    if data is None:
        raise web.HTTPNotFound(text="eval photo unreadable")
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


async def report_handler(request):
    folder, _, _ = await _evaluation(request)
    path = await asyncio.to_thread(sources.report_path, folder)
    if path is None:
        raise web.HTTPNotFound(text="no report.html for this version")
    text = await asyncio.to_thread(sources.storage.read_text, path)
    return web.Response(text=text, content_type="text/html")


async def index_handler(_request):
    return web.FileResponse(STATIC / "index.html")


def make_app(server, model=defaults.MODEL_NAME, model_config_file=None):
    app = web.Application(client_max_size=MAX_PHOTOS * MAX_PHOTO_BYTES)
    server = server.rstrip("/")
    app[SETTINGS] = {"server": server, "model": model, "model_config_file": model_config_file,
                     "client": predict_client.RestClient(server)}

    async def session(app):
        app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    app.router.add_get("/", index_handler)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/models", models_handler)
    app.router.add_post("/api/predict", predict_handler)
    app.router.add_get("/api/eval/{version}", eval_handler)
    app.router.add_get("/api/eval/{version}/photos/{index}", photo_handler)
    app.router.add_get("/api/eval/{version}/report", report_handler)
    return app


def main(argv=None):
    parser = cli.ArgumentParser(prog="flowers console", description=__doc__)
    parser.add_argument("--server", required=True, help="the model server's REST address, http://HOST:8501")
    parser.add_argument("--model", default=defaults.MODEL_NAME)
    parser.add_argument("--model_config_file", help="models.config: labels, policy and the base path whose "
                                                    "version folders hold the eval files")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    args = parser.parse_args(argv)
    app = make_app(args.server, args.model, args.model_config_file)
    web.run_app(app, host=args.host, port=args.port, access_log=None,
                print=lambda _: print(f"flowers console on http://{args.host}:{args.port}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
