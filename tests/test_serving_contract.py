"""The serving contract: what a client may rely on from TF Serving, REST and gRPC.

By default a fixture runs `flowers serve` (a subprocess on free loopback ports) on the
exported test model. Point the same tests at a real TF Serving with
    FLOWERS_REST_URL=http://host:8501 FLOWERS_GRPC_ADDR=host:8500 [FLOWERS_MODEL_NAME=flowers]
    [FLOWERS_MODEL_LABEL=stable] [FLOWERS_METRICS_PATH=/monitoring/prometheus/metrics]
    [FLOWERS_MAX_REQUEST_BYTES=N (only if the server enforces a request size limit)]
serving a model exported by `flowers.export` (e.g. the serve image with containers/serve/*.config).
The TF Serving fidelity tests (second half) use small models of TF Serving's own kind
(tests/tf_serving_models.py: a TF1 half_plus_two, a TF2 one); for a real TF Serving write them with
`python -m tests.tf_serving_models DIR`, serve DIR/models.config with --enable_model_warmup, and give
    [FLOWERS_TOY_REST_URL=... FLOWERS_TOY_GRPC_ADDR=...] (default: the two above)
    [FLOWERS_TOY_GRPC_SOCKET=/path (a server started with --grpc_socket_path)]
"""
import base64
import io
import json
import os
import types
import urllib.error
import urllib.request

import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, inference_pb2, predict_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

import grpc
import numpy as np
import pytest
from PIL import Image

from flowers import testing
from flowers.predict import client
from tests import tf_serving_models as toy_models

REST_URL = os.environ.get("FLOWERS_REST_URL")
GRPC_ADDR = os.environ.get("FLOWERS_GRPC_ADDR")
MODEL = os.environ.get("FLOWERS_MODEL_NAME", "flowers")
LABEL = os.environ.get("FLOWERS_MODEL_LABEL", "stable")
METRICS_PATH = os.environ.get("FLOWERS_METRICS_PATH", "/monitoring/prometheus/metrics")
LOCAL_MAX_BYTES = 2 << 20
TOY_REST_URL = os.environ.get("FLOWERS_TOY_REST_URL", REST_URL)
TOY_GRPC_ADDR = os.environ.get("FLOWERS_TOY_GRPC_ADDR", GRPC_ADDR)
TOY_GRPC_SOCKET = os.environ.get("FLOWERS_TOY_GRPC_SOCKET")


@pytest.fixture(scope="module")
def endpoint(request, tmp_path_factory):
    """{rest, grpc, model, label, max_bytes, versions, label_version}: the server under test."""
    if REST_URL or GRPC_ADDR:
        max_bytes = os.environ.get("FLOWERS_MAX_REQUEST_BYTES")
        yield types.SimpleNamespace(rest=REST_URL, grpc=GRPC_ADDR, model=MODEL, label=LABEL, versions=None,
                                    label_version=None, max_bytes=int(max_bytes) if max_bytes else None)
        return
    exported = request.getfixturevalue("exported_model")
    folder = tmp_path_factory.mktemp("contract")
    base = folder / "models" / MODEL
    base.mkdir(parents=True)
    for version in (1, 2):  # the same SavedModel as two versions, for version and label routing
        (base / str(version)).symlink_to(exported["version_path"], target_is_directory=True)
    args = testing.write_config_files(
        str(folder), MODEL, base, labels={LABEL: 1, "canary": 2}, policy="all {}", metrics_path=METRICS_PATH,
        batching_text="max_batch_size { value: 16 }\nbatch_timeout_micros { value: 2000 }\n"
                      "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n")
    with testing.running([*args, "--rest_max_request_bytes", str(LOCAL_MAX_BYTES), "--enable_model_warmup",
                         "--grpc_max_request_bytes", str(LOCAL_MAX_BYTES)]) as (rest_url, grpc_addr):
        yield types.SimpleNamespace(rest=rest_url, grpc=grpc_addr, model=MODEL, label=LABEL, versions=[1, 2],
                                    label_version=1, max_bytes=LOCAL_MAX_BYTES)


@pytest.fixture(scope="module")
def photos5(photos):
    """One photo per class, as bytes, keyed by path."""
    paths = [photos[c][-1] for c in sorted(photos)]
    return paths, [open(p, "rb").read() for p in paths]


def need(endpoint, kind):
    if getattr(endpoint, kind) is None:
        pytest.skip(f"no {kind} endpoint given")


def rest_call(endpoint, path, body=None, raw=None, method=None):
    """(HTTP status, parsed JSON body) for a REST call; errors included."""
    need(endpoint, "rest")
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(endpoint.rest + path, data=data, method=method or ("GET" if data is None else "POST"))
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def b64(data):
    return {"b64": base64.b64encode(data).decode()}


def instances(paths, blobs):
    return {"instances": [{"key": p, "image_bytes": b64(b)} for p, b in zip(paths, blobs)]}


def grpc_client(endpoint):
    need(endpoint, "grpc")
    return client.GrpcClient(endpoint.grpc, timeout_s=120)


def a_version(endpoint):
    status = rest_call(endpoint, f"/v1/models/{endpoint.model}")[1] if endpoint.rest else \
        grpc_client(endpoint).status(endpoint.model)
    return int(status["model_version_status"][0]["version"])


def check_prediction_rows(rows, keys):
    assert [r["key"] for r in rows] == keys
    for row in rows:
        assert set(row) == {"key", "prediction", "label", "scores"}
        assert isinstance(row["label"], str) and row["label"]
        assert abs(sum(row["scores"]) - 1.0) < 1e-4
        assert row["prediction"] == int(np.argmax(row["scores"]))


# -- status and metadata ------------------------------------------------------------------------------

def test_model_status_rest(endpoint):
    status, body = rest_call(endpoint, f"/v1/models/{endpoint.model}")
    assert status == 200
    entries = body["model_version_status"]
    assert entries and all(set(e) == {"version", "state", "status"} for e in entries)
    assert all(e["status"] == {"error_code": "OK", "error_message": ""} for e in entries
               if e["state"] == "AVAILABLE")
    assert "AVAILABLE" in {e["state"] for e in entries}
    if endpoint.versions:
        assert sorted(int(e["version"]) for e in entries) == endpoint.versions
    version = entries[0]["version"]
    status, one = rest_call(endpoint, f"/v1/models/{endpoint.model}/versions/{version}")
    assert status == 200 and [e["version"] for e in one["model_version_status"]] == [version]


def test_model_status_grpc_matches_rest(endpoint):
    need(endpoint, "rest")
    with grpc_client(endpoint) as api:
        assert api.status(endpoint.model) == rest_call(endpoint, f"/v1/models/{endpoint.model}")[1]


def test_metadata_rest_and_grpc(endpoint):
    status, body = rest_call(endpoint, f"/v1/models/{endpoint.model}/metadata")
    assert status == 200
    assert body["model_spec"]["name"] == endpoint.model and body["model_spec"]["version"].isdigit()
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert {k: v["dtype"] for k, v in sig["inputs"].items()} == {"key": "DT_STRING", "image_bytes": "DT_STRING"}
    assert {k: v["dtype"] for k, v in sig["outputs"].items()} == {
        "key": "DT_STRING", "label": "DT_STRING", "prediction": "DT_INT64", "scores": "DT_FLOAT"}
    with grpc_client(endpoint) as api:
        assert api.metadata(endpoint.model) == body


# -- predict --------------------------------------------------------------------------------------------

def test_predict_row_format_with_b64(endpoint, photos5):
    paths, blobs = photos5
    status, body = rest_call(endpoint, f"/v1/models/{endpoint.model}:predict", instances(paths, blobs))
    assert status == 200, body
    check_prediction_rows(body["predictions"], paths)


def test_predict_columnar_format_matches_row_format(endpoint, photos5):
    paths, blobs = photos5
    path = f"/v1/models/{endpoint.model}:predict"
    status, body = rest_call(endpoint, path, {"signature_name": "serving_default",
                                              "inputs": {"key": paths, "image_bytes": [b64(b) for b in blobs]}})
    assert status == 200, body
    outputs = body["outputs"]
    assert set(outputs) == {"key", "prediction", "label", "scores"}
    rows = rest_call(endpoint, path, instances(paths, blobs))[1]["predictions"]
    assert outputs["key"] == paths and outputs["label"] == [r["label"] for r in rows]
    np.testing.assert_allclose(outputs["scores"], [r["scores"] for r in rows], atol=1e-5)


def test_predict_grpc_matches_rest(endpoint, photos5):
    paths, blobs = photos5
    rows = rest_call(endpoint, f"/v1/models/{endpoint.model}:predict", instances(paths, blobs))[1]["predictions"]
    with grpc_client(endpoint) as api:
        response = api.predict_response(blobs, keys=paths, model=endpoint.model)
        assert response.model_spec.name == endpoint.model
        assert response.model_spec.signature_name == "serving_default"
        got = client.rows(response.outputs)
    check_prediction_rows(got, paths)
    assert [r["label"] for r in got] == [r["label"] for r in rows]
    np.testing.assert_allclose([r["scores"] for r in got], [r["scores"] for r in rows], atol=1e-5)


def test_predict_by_version_and_by_label(endpoint, photos5):
    paths, blobs = photos5[0][:1], photos5[1][:1]
    version = a_version(endpoint)
    status, body = rest_call(endpoint, f"/v1/models/{endpoint.model}/versions/{version}:predict",
                             instances(paths, blobs))
    assert status == 200, body
    check_prediction_rows(body["predictions"], paths)
    status, body = rest_call(endpoint, f"/v1/models/{endpoint.model}/labels/{endpoint.label}:predict",
                             instances(paths, blobs))
    assert status == 200, body
    with grpc_client(endpoint) as api:
        by_version = api.predict_response(blobs, keys=paths, model=endpoint.model, version=version)
        assert by_version.model_spec.version.value == version
        by_label = api.predict_response(blobs, keys=paths, model=endpoint.model, label=endpoint.label)
        if endpoint.label_version is not None:
            assert by_label.model_spec.version.value == endpoint.label_version


# -- bad input ------------------------------------------------------------------------------------------

def not_an_image():
    return b"this is plain text, not an image"


def tiny_png():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buf, "PNG")
    return buf.getvalue()


BAD_REST = {
    # name: (path suffix, raw body, expected HTTP status)
    "invalid_json": (":predict", b'{"instances": [', 400),
    "empty_body": (":predict", b"", 400),
    "not_an_object": (":predict", b"[1, 2]", 400),
    "bad_base64": (":predict", json.dumps({"instances": [{"key": "k", "image_bytes": {"b64": "%%%not base64"}}]}), 400),
    "not_an_image": (":predict", json.dumps(instances(["k"], [not_an_image()])), 400),
    "missing_instances": (":predict", json.dumps({"rows": []}), 400),
    "wrong_input_name": (":predict", json.dumps({"instances": [{"key": "k", "image": b64(tiny_png())}]}), 400),
    "wrong_type": (":predict", json.dumps({"instances": [{"key": 7, "image_bytes": b64(tiny_png())}]}), 400),
    "wrong_signature": (":predict", json.dumps({"signature_name": "nope", **instances(["k"], [tiny_png()])}), 400),
    "unknown_version": ("/versions/987:predict", json.dumps(instances(["k"], [tiny_png()])), 404),
    "unknown_label": ("/labels/no-such-label:predict", json.dumps(instances(["k"], [tiny_png()])), 400),
}


@pytest.mark.parametrize("case", sorted(BAD_REST))
def test_bad_rest_requests_get_4xx_with_an_error_message(endpoint, case):
    suffix, raw, expected = BAD_REST[case]
    status, body = rest_call(endpoint, f"/v1/models/{endpoint.model}{suffix}",
                             raw=raw if isinstance(raw, bytes) else raw.encode(), method="POST")
    assert status == expected, body
    assert set(body) == {"error"} and body["error"]


def test_unknown_model_is_404(endpoint):
    status, body = rest_call(endpoint, "/v1/models/no_such_model:predict", instances(["k"], [tiny_png()]))
    assert status == 404 and "no_such_model" in body["error"]
    status, body = rest_call(endpoint, "/v1/models/no_such_model")
    assert status == 404 and body["error"]
    status, body = rest_call(endpoint, f"/v1/models/{endpoint.model}/versions/987")
    assert status == 404 and body["error"]


@pytest.mark.parametrize("case,expected", [
    ("not_an_image", "INVALID_ARGUMENT"), ("wrong_signature", "INVALID_ARGUMENT"),
    ("unknown_model", "NOT_FOUND"), ("unknown_version", "NOT_FOUND"), ("unknown_label", "INVALID_ARGUMENT"),
])
def test_bad_grpc_requests_get_the_matching_status(endpoint, case, expected):
    kwargs = {"model": endpoint.model}
    blobs = [tiny_png()]
    if case == "not_an_image":
        blobs = [not_an_image()]
    elif case == "wrong_signature":
        kwargs["signature_name"] = "nope"
    elif case == "unknown_model":
        kwargs["model"] = "no_such_model"
    elif case == "unknown_version":
        kwargs["version"] = 987
    elif case == "unknown_label":
        kwargs["label"] = "no-such-label"
    with grpc_client(endpoint) as api, pytest.raises(client.ServingError) as err:
        api.predict(blobs, keys=["k"], **kwargs)
    assert err.value.status == expected and err.value.message


def test_wrong_dtype_over_grpc_is_invalid_argument(endpoint):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    with grpc_client(endpoint) as api:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = endpoint.model
        request.inputs["key"].CopyFrom(tf.make_tensor_proto(["k"]))
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([1.0], dtype=tf.float32))
        with pytest.raises(grpc.RpcError) as err:
            api.predictions.Predict(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_requests_are_refused(endpoint):
    if endpoint.max_bytes is None:
        pytest.skip("FLOWERS_MAX_REQUEST_BYTES not given: the server may have no request size limit")
    big = b"\xff" * (endpoint.max_bytes + 1024)
    status, body = rest_call(endpoint, f"/v1/models/{endpoint.model}:predict", instances(["k"], [big]))
    assert 400 <= status < 500 and body.get("error")
    with grpc_client(endpoint) as api, pytest.raises(client.ServingError) as err:
        api.predict([big], keys=["k"], model=endpoint.model)
    assert err.value.status == "RESOURCE_EXHAUSTED"


def test_server_still_answers_after_bad_requests(endpoint, photos5):
    paths, blobs = photos5
    for suffix, raw, _ in BAD_REST.values():
        rest_call(endpoint, f"/v1/models/{endpoint.model}{suffix}",
                  raw=raw if isinstance(raw, bytes) else raw.encode(), method="POST")
    with grpc_client(endpoint) as api:
        with pytest.raises(client.ServingError):
            api.predict([not_an_image()], keys=["k"], model=endpoint.model)
        check_prediction_rows(api.predict(blobs[:2], keys=paths[:2], model=endpoint.model), paths[:2])
    status, body = rest_call(endpoint, f"/v1/models/{endpoint.model}:predict", instances(paths, blobs))
    assert status == 200
    check_prediction_rows(body["predictions"], paths)
    assert rest_call(endpoint, f"/v1/models/{endpoint.model}")[0] == 200


# -- metrics --------------------------------------------------------------------------------------------

def test_prometheus_metrics_count_requests(endpoint, photos5):
    need(endpoint, "rest")
    rest_call(endpoint, f"/v1/models/{endpoint.model}:predict", instances(photos5[0][:1], photos5[1][:1]))
    with urllib.request.urlopen(endpoint.rest + METRICS_PATH, timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        page = resp.read().decode()
    lines = [line for line in page.splitlines() if line.startswith(":tensorflow:serving:request_count")]
    assert any(f'model_name="{endpoint.model}"' in line for line in lines), page[:2000]
    assert ":tensorflow:serving:request_latency" in page


# -- the classify signature of our model ------------------------------------------------------------------

def test_classify_signature_gives_label_score_pairs_rest_and_grpc(endpoint, photos5):
    paths, blobs = photos5
    rows = rest_call(endpoint, f"/v1/models/{endpoint.model}:predict", instances(paths, blobs))[1]["predictions"]
    with client.RestClient(endpoint.rest, timeout_s=120) as rest:
        results = rest.classify(blobs, model=endpoint.model)
    assert len(results) == len(blobs)
    for pairs, row in zip(results, rows):
        labels = [label for label, _ in pairs]
        assert len(labels) == len(row["scores"]) and all(isinstance(label, str) and label for label in labels)
        np.testing.assert_allclose([score for _, score in pairs], row["scores"], atol=1e-5)
        assert labels[int(np.argmax(row["scores"]))] == row["label"]
    with grpc_client(endpoint) as api:
        np.testing.assert_allclose([[s for _, s in pairs] for pairs in api.classify(blobs, model=endpoint.model)],
                                   [[s for _, s in pairs] for pairs in results], atol=1e-6)


def test_grpc_outputs_fill_the_typed_fields(endpoint, photos5):
    paths, blobs = photos5
    with grpc_client(endpoint) as api:
        outputs = api.predict_response(blobs, keys=paths, model=endpoint.model).outputs
    assert not any(proto.tensor_content for proto in outputs.values())
    scores = outputs["scores"]
    assert len(scores.float_val) == np.prod([d.size for d in scores.tensor_shape.dim]) > len(blobs)
    assert len(outputs["prediction"].int64_val) == len(blobs)
    assert [v.decode() for v in outputs["key"].string_val] == paths
    assert len(outputs["label"].string_val) == len(blobs)


# -- TF Serving's semantics, on models of its own kind (tests/tf_serving_models.py) ---------------------------

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """{rest, grpc, socket, local}: a server with half_plus_two (TF1) and half_plus_two_tf2 (and,
    locally, bad_warmup), batching off, started with the flags TF Serving's own test harness uses."""
    if REST_URL or GRPC_ADDR:
        yield types.SimpleNamespace(rest=TOY_REST_URL, grpc=TOY_GRPC_ADDR, socket=TOY_GRPC_SOCKET, local=False)
        return
    folder = tmp_path_factory.mktemp("toy")
    config = toy_models.write_all(str(folder), bad_warmup=True)
    socket_path = str(folder / "grpc.sock")
    with testing.running(["--model_config_file", config, "--enable_model_warmup", "--max_num_load_retries", "0",
                          "--grpc_socket_path", socket_path,
                          "--grpc_channel_arguments", "grpc.max_concurrent_streams=1000"]) as (rest_url, grpc_addr):
        yield types.SimpleNamespace(rest=rest_url, grpc=grpc_addr, socket=socket_path, local=True)


def toy_call(toy, path, body=None, raw=None):
    return rest_call(types.SimpleNamespace(rest=toy.rest), path, body, raw)


def toy_stub(toy, target=None):
    need(toy, "grpc")
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target or toy.grpc))


def examples_input(target, *xs, context=None):
    """tf.Examples with feature x (or x2, with x in the context) into a tensorflow.serving.Input."""
    if context is None:
        for x in xs:
            target.example_list.examples.add().features.feature["x"].float_list.value.append(x)
        return
    target.example_list_with_context.context.features.feature["x"].float_list.value.append(context)
    for x in xs:
        target.example_list_with_context.examples.add().features.feature["x2"].float_list.value.append(x)


@pytest.mark.parametrize("model", [toy_models.TF1, toy_models.TF2])
def test_shapes_are_left_to_tensorflow(toy, model):
    """http_rest_api_handler_test: [[1, 2], [3, 4]] to a [None, 1] signature works."""
    status, body = toy_call(toy, f"/v1/models/{model}:predict", {"instances": [[1, 2], [3, 4]]})
    assert (status, body) == (200, {"predictions": [[2.5, 3.0], [3.5, 4.0]]})
    status, body = toy_call(toy, f"/v1/models/{model}:predict", {"inputs": [[1.0], [2.0], [5.0]]})
    assert (status, body) == (200, {"outputs": [[2.5], [3.0], [4.5]]})


def test_tf1_session_model_predicts(toy):
    status, body = toy_call(toy, f"/v1/models/{toy_models.TF1}:predict", {"instances": [1.0, 2.0, 5.0]})
    assert (status, body) == (200, {"predictions": [2.5, 3.0, 4.5]})


def test_scalar_columnar_input_without_batching(toy):
    status, body = toy_call(toy, f"/v1/models/{toy_models.TF2}:predict", {"signature_name": "scalar", "inputs": 3.0})
    assert (status, body) == (200, {"outputs": 3.5})


def test_classify_and_regress_rest(toy):
    base = f"/v1/models/{toy_models.TF1}"
    assert toy_call(toy, base + ":classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}) \
        == (200, {"results": [[["", 3.0]]]})
    assert toy_call(toy, base + ":regress", {"signature_name": "regress_x_to_y",
                                             "examples": [{"x": 2.0}, {"x": [4.0]}]}) == (200, {"results": [3.0, 4.0]})
    # The context is merged into every example: x from the context, y2 = 0.5 * x + 3.
    assert toy_call(toy, base + "/versions/1:regress", {"signature_name": "regress_x_to_y2", "context": {"x": 1.0},
                                                        "examples": [{"x2": 9.0}, {"x2": 8.0}]}) \
        == (200, {"results": [3.5, 3.5]})


@pytest.mark.parametrize("verb,body,message", [
    ("classify", {"examples": [{"x": 2.0}]},  # serving_default is a predict signature
     "Expected classification signature method_name to be tensorflow/serving/classify. "
     "Was: tensorflow/serving/predict"),
    ("regress", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
     "Expected regression signature method_name to be tensorflow/serving/regress. "
     "Was: tensorflow/serving/classify"),
    ("classify", {"signature_name": "classify_x_to_y", "instances": [{"x": 2.0}]}, None),
    ("regress", {"signature_name": "regress_x_to_y", "examples": {"x": 2.0}}, None),
])
def test_malformed_classify_and_regress_requests_are_400(toy, verb, body, message):
    status, answer = toy_call(toy, f"/v1/models/{toy_models.TF1}:{verb}", body)
    assert status == 400 and set(answer) == {"error"} and answer["error"]
    if message:
        assert answer["error"] == message


def test_classify_regress_and_multi_inference_grpc(toy):
    stub = toy_stub(toy)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = toy_models.TF1, "classify_x_to_y"
    examples_input(request.input, 2.0, 4.0)
    response = stub.Classify(request, timeout=60)
    assert [[(c.label, c.score) for c in row.classes] for row in response.result.classifications] \
        == [[("", 3.0)], [("", 4.0)]]
    assert (response.model_spec.name, response.model_spec.version.value) == (toy_models.TF1, 1)

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = toy_models.TF1, "regress_x_to_y2"
    examples_input(regress.input, 9.0, context=1.0)
    assert [r.value for r in stub.Regress(regress, timeout=60).result.regressions] == [3.5]

    multi = inference_pb2.MultiInferenceRequest()
    examples_input(multi.input, 2.0)
    for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"),
                              ("regress_x_to_y2", "tensorflow/serving/regress")):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = toy_models.TF1, signature
    results = stub.MultiInference(multi, timeout=60).results
    assert [r.model_spec.signature_name for r in results] == ["classify_x_to_y", "regress_x_to_y2"]
    assert results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert results[1].regression_result.regressions[0].value == 4.0

    regress.model_spec.signature_name = "classify_x_to_y"
    with pytest.raises(grpc.RpcError) as err:
        stub.Regress(regress, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    multi.tasks[1].model_spec.signature_name = "classify_x_to_y"
    with pytest.raises(grpc.RpcError) as err:
        stub.MultiInference(multi, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_predict_fills_float_val_and_listens_on_the_unix_socket(toy):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = toy_models.TF1
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0], [3.0]], dtype=tf.float32))
    targets = [toy.grpc] + ([f"unix:{toy.socket}"] if toy.socket else [])
    for target in targets:
        y = toy_stub(toy, target).Predict(request, timeout=60).outputs["y"]
        assert (list(y.float_val), y.tensor_content, [d.size for d in y.tensor_shape.dim]) \
            == ([2.5, 3.0, 3.5], b"", [3, 1])


def test_json_edge_cases(toy):
    base = f"/v1/models/{toy_models.TF1}"
    # Beyond float32: ±Infinity (json_tensor_test.cc); deep nesting under a key nobody reads is fine.
    assert toy_call(toy, base + ":predict", {"instances": [3.5e38, -1e300]}) == \
        (200, {"predictions": [float("inf"), float("-inf")]})
    deep = b'{"instances": [1.0], "ignored": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    assert toy_call(toy, base + ":predict", raw=deep) == (200, {"predictions": [2.5]})
    status, body = toy_call(toy, base + "/versions/18446744073709551616:predict", {"instances": [1.0]})
    assert status == 400 and body["error"] == "Failed to convert version: 18446744073709551616 to numeric."
    # The model name is matched before percent-decoding: half%5Fplus_two is not half_plus_two.
    status, body = toy_call(toy, "/v1/models/half%5Fplus_two:predict", {"instances": [1.0]})
    assert status == 404 and "half%5Fplus_two" in body["error"]


def test_a_version_whose_warmup_fails_is_not_served(toy):
    if not toy.local:
        pytest.skip("TF Serving exits when a model fails to load at start: bad_warmup is local only")
    status, body = toy_call(toy, f"/v1/models/{toy_models.BAD_WARMUP}")
    assert status == 200
    (entry,) = body["model_version_status"]
    assert entry["state"] == "END" and "no_such_signature" in entry["status"]["error_message"]
