"""Issue 11 on the serving side: no request, file or client takes the server down or a model out.

One real server on loopback (config file polled every 0.3 s), small limits so the tests stay cheap."""
import base64
import io
import json
import socket
import time
import urllib.error
import urllib.request

import grpc
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from flowers import testing
from flowers.core import model_config
from flowers.serving import grpc_service

from conftest import base_path_serving

MODEL = "flowers"
INSTANCES = 8
REQUEST_PIXELS = 2_500_000
MAX_BODY = 1 << 20


def tiny_png(size=(8, 8)):
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(exported_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliable")
    base = base_path_serving(folder / "models", exported_model["version_path"], MODEL)
    args = testing.write_config_files(str(folder), MODEL, base, policy="latest {}")
    log_path = str(folder / "serve.log")
    proc, rest_url, grpc_addr = testing.start_subprocess(
        [*args, "--model_config_file_poll_wait_seconds", "0.3", "--file_system_poll_wait_seconds", "0.3",
         "--max_request_instances", str(INSTANCES), "--max_request_pixels", str(REQUEST_PIXELS),
         "--rest_max_request_bytes", str(MAX_BODY), "--rest_read_timeout_seconds", "2",
         "--allow_reload_config_requests", "--reload_config_roots", str(folder / "models")],
        log_path=log_path)
    try:
        yield {"rest": rest_url, "grpc": grpc_addr, "base": base, "folder": folder, "log": log_path,
               "config": folder / "models.config", "model": exported_model, "proc": proc}
    finally:
        testing.stop_subprocess(proc)


def post(rest_url, doc_or_bytes, path=f"/v1/models/{MODEL}:predict"):
    body = doc_or_bytes if isinstance(doc_or_bytes, bytes) else json.dumps(doc_or_bytes).encode()
    req = urllib.request.Request(rest_url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def instances(blobs):
    return {"instances": [{"key": str(i), "image_bytes": {"b64": base64.b64encode(b).decode()}}
                          for i, b in enumerate(blobs)]}


def photo(server):
    return open(server["model"]["held_out"]["daisy"][0], "rb").read()


def serving_ok(server):
    status, body = post(server["rest"], instances([photo(server)]))
    return status == 200 and body["predictions"][0]["label"] in server["model"]["labels"]


def raw_http(rest_url, data, read_timeout_s=20, close_after_send=False):
    """Send raw bytes on a fresh connection; the status line's code, or None if the peer said nothing."""
    host, port = rest_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=read_timeout_s) as s:
        s.sendall(data)
        if close_after_send:
            return None
        reply = s.recv(4096)
    return int(reply.split()[1]) if reply else None


# -- Denial of service through tiny requests ------------------------------------------------------

@pytest.mark.parametrize("make", [lambda p: testing.webp_declaring(13000, 13000), lambda p: testing.jpeg_declaring(p, 7000, 7000)],
                         ids=["webp-13000x13000", "jpeg-7000x7000"])
def test_tiny_files_declaring_huge_images_are_refused_by_the_server(server, make):
    status, body = post(server["rest"], instances([make(photo(server))]))
    assert status == 400 and ("too large" in body["error"] or "pixel limit" in body["error"])
    assert serving_ok(server)


def test_the_exported_model_itself_refuses_images_over_the_limit(server):
    """On GKE the real TF Serving runs only the graph: the check must be in the SavedModel."""
    fn = tf.saved_model.load(server["model"]["version_path"]).signatures["serving_default"]
    for blob in (testing.webp_declaring(5100, 5100), testing.jpeg_declaring(photo(server), 5100, 5100)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
            fn(key=tf.constant(["k"]), image_bytes=tf.constant([blob]))
    ok = fn(key=tf.constant(["k"]), image_bytes=tf.constant([photo(server)]))
    assert ok["label"].numpy()[0].decode() in server["model"]["labels"]


def test_instances_per_request_are_capped(server):
    status, body = post(server["rest"], instances([tiny_png()] * (INSTANCES + 1)))
    assert status == 400 and f"limit of {INSTANCES}" in body["error"]
    status, body = post(server["rest"], instances([tiny_png()] * INSTANCES))
    assert status == 200 and len(body["predictions"]) == INSTANCES


def test_total_pixels_per_request_are_capped(server):
    big = tiny_png((1000, 1000))  # each under the per-image limit; three over the request's
    status, body = post(server["rest"], instances([big] * 3))
    assert status == 400 and f"limit of {REQUEST_PIXELS} pixels" in body["error"]


def test_grpc_declared_shape_larger_than_the_message_is_refused_before_expanding(server):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    for name in ("key", "image_bytes"):
        tensor = request.inputs[name]
        tensor.dtype = tf.string.as_datatype_enum
        tensor.tensor_shape.dim.add(size=2_000_000)
        tensor.string_val.append(b"x")
    assert request.ByteSize() < 200
    with grpc.insecure_channel(server["grpc"]) as channel:
        with pytest.raises(grpc.RpcError) as e:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "declares 2000000 elements but the message carries 1" in e.value.details()


# -- Small but real ----------------------------------------------------------------------------------

def test_lone_surrogate_is_a_400_not_a_500(server):
    body = b'{"instances": [{"key": "\\ud800", "image_bytes": {"b64": ""}}]}'
    status, doc = post(server["rest"], body)
    assert status == 400 and "UTF-8" in doc["error"]


def test_declared_content_length_over_the_limit_gets_413_before_the_body(server):
    head = (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY * 10}\r\n\r\n").encode()
    assert raw_http(server["rest"], head + b"{") == 413  # the rest of the body is never sent


def test_slow_body_gets_408_after_the_read_timeout(server):
    head = (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n").encode()
    assert raw_http(server["rest"], head + b'{"instances"') == 408


def test_client_hanging_up_mid_body_is_not_an_internal_error(server):
    head = (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n").encode()
    for _ in range(3):
        raw_http(server["rest"], head + b'{"instances": [', close_after_send=True)
    time.sleep(1)
    assert serving_ok(server)
    with open(server["log"], encoding="utf-8", errors="replace") as f:
        log = f.read()
    assert "Traceback" not in log and "ERROR flowers.serving" not in log
    with urllib.request.urlopen(server["rest"] + "/monitoring/prometheus/metrics", timeout=30) as resp:
        page = resp.read().decode()
    assert 'status="INTERNAL"' not in page


# -- The model store ---------------------------------------------------------------------------------

def status_of(server):
    with urllib.request.urlopen(f"{server['rest']}/v1/models/{MODEL}", timeout=30) as resp:
        return {int(v["version"]): v for v in json.loads(resp.read())["model_version_status"]}


def wait_for(condition, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_corrupt_newer_version_leaves_the_old_one_serving(server):
    broken = server["base"] / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"half a copy")
    try:
        wait_for(lambda: status_of(server).get(2, {}).get("state") == "END")
        time.sleep(1)  # a few more polls: nothing unloads version 1
        states = status_of(server)
        assert states[1]["state"] == "AVAILABLE" and serving_ok(server)
        error = states[2]["status"]["error_message"]
        assert error and str(server["folder"]) not in error and "/tmp" not in error  # no server paths
    finally:
        (broken / "saved_model.pb").unlink()
        broken.rmdir()


def write_config(server, text):
    tmp = server["config"].with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(server["config"])


def test_empty_config_or_a_wrong_base_path_keeps_the_models_serving(server):
    good = server["config"].read_text()
    wrong = model_config.single_model(MODEL, str(server["folder"] / "no-such-folder"))
    try:
        for text in ("", model_config.to_text(wrong)):
            write_config(server, text)
            time.sleep(1.5)  # several polls
            assert status_of(server)[1]["state"] == "AVAILABLE" and serving_ok(server)
    finally:
        write_config(server, good)
        time.sleep(1)


# -- Access ------------------------------------------------------------------------------------------

def reload(server, base):
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(model_config.single_model(MODEL, str(base)))
    with grpc.insecure_channel(server["grpc"]) as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)


@pytest.mark.parametrize("where", ["/etc", "{folder}/models/../../elsewhere", "gs://bucket/models/x"])
def test_reload_config_refuses_base_paths_outside_the_servers_roots(server, where):
    with pytest.raises(grpc.RpcError) as e:
        reload(server, where.format(folder=server["folder"]))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert serving_ok(server)
    reload(server, server["base"])  # inside the roots: accepted
    assert serving_ok(server)


def test_reload_config_is_refused_without_the_flag():
    config = model_config.single_model(MODEL, "/models/flowers")
    with pytest.raises(Exception) as e:
        grpc_service.check_reload(config, None)
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    grpc_service.check_reload(config, ["/models"])
    with pytest.raises(Exception):
        grpc_service.check_reload(config, ["/models/flow"])  # a prefix of the name is not a parent


def test_internal_errors_show_no_exception_names_or_paths():
    from flowers.serving import errors

    message = errors.redact_paths("Failed to load version 3: /srv/models/3/saved_model.pb: bad; gs://b/m")
    assert "/srv" not in message and "gs://" not in message
    assert errors.internal().message == errors.INTERNAL_MESSAGE and "Error" not in errors.INTERNAL_MESSAGE
