"""Behaviour of the local server and the clients that the contract suite cannot assume of
every TF Serving: version roll-out while serving, config reload, batching (the client CLIs:
test_predict.py)."""
import os
import pathlib
import re
import threading
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from flowers import testing
from flowers.core import model_config
from flowers.predict import client
from flowers.serving import batching, grpc_service, protos

from conftest import base_path_serving

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = "flowers"


def wait_for(condition, timeout_s=90, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def live(exported_model, tmp_path_factory):
    """A server polling its base path and config every 0.5 s, batching with a 50 ms window."""
    folder = tmp_path_factory.mktemp("live")
    base = base_path_serving(folder / "models", exported_model["version_path"], MODEL)
    args = testing.write_config_files(
        str(folder), MODEL, base, labels={"stable": 1}, policy="latest { num_versions: 2 }",
        batching_text="max_batch_size { value: 8 }\nbatch_timeout_micros { value: 50000 }\n"
                      "num_batch_threads { value: 1 }\n")
    with testing.running([*args, "--model_config_file_poll_wait_seconds", "0.5",
                         "--file_system_poll_wait_seconds", "0.5"]) as (rest_url, grpc_addr):
        yield {"rest": rest_url, "grpc": grpc_addr, "base": base, "config": folder / "models.config",
               "model": exported_model}


def held_out(live, n_per_class=1):
    held = live["model"]["held_out"]
    return [p for c in sorted(held) for p in held[c][:n_per_class]]


def read(paths):
    return [open(p, "rb").read() for p in paths]


def metric(rest_url, name):
    with urllib.request.urlopen(rest_url + "/monitoring/prometheus/metrics", timeout=30) as resp:
        page = resp.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", page, re.M)
    return float(match[1]) if match else 0.0


def test_server_answers_exactly_as_the_model_in_process(live):
    paths = held_out(live)
    fn = tf.saved_model.load(live["model"]["version_path"]).signatures["serving_default"]
    expected = fn(key=tf.constant(paths), image_bytes=tf.constant(read(paths)))
    rows = client.RestClient(live["rest"]).predict(read(paths), keys=paths, model=MODEL)
    assert [r["label"] for r in rows] == [s.decode() for s in expected["label"].numpy()]
    np.testing.assert_allclose([r["scores"] for r in rows], expected["scores"].numpy(), atol=1e-5)


def test_concurrent_requests_are_batched_and_a_bad_one_fails_alone(live):
    paths = held_out(live)
    bodies = [[p, data] for p, data in zip(paths, read(paths))] + [["bad", b"\x89PNG\r\n\x1a\n" + b"\0" * 40]]
    rows_before = metric(live["rest"], "flowers_serving_batch_size_sum")
    batches_before = metric(live["rest"], "flowers_serving_batch_size_count")
    api, results, barrier = client.RestClient(live["rest"]), {}, threading.Barrier(len(bodies))

    def send(key, data):
        barrier.wait()
        try:
            results[key] = api.predict([data], keys=[key], model=MODEL)[0]
        except client.ServingError as e:
            results[key] = e

    threads = [threading.Thread(target=send, args=body) for body in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results["bad"], client.ServingError) and results["bad"].status == 400
    assert all(results[p]["key"] == p for p in paths)
    rows = metric(live["rest"], "flowers_serving_batch_size_sum") - rows_before
    batches = metric(live["rest"], "flowers_serving_batch_size_count") - batches_before
    assert rows == len(bodies) and batches < rows  # at least one model call served several requests


def test_new_version_label_move_and_unload_without_dropping_requests(live):
    base, config, grpc_addr = live["base"], live["config"], live["grpc"]
    image = read(held_out(live)[:1])
    statuses, stop = [], threading.Event()

    def keep_asking():  # a client that must never see an error during the roll-out
        api = client.RestClient(live["rest"])
        while not stop.is_set():
            try:
                api.predict(image, model=MODEL)
                statuses.append("OK")
            except (client.ServingError, OSError) as e:
                statuses.append(repr(e))

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        # 1. a new version folder appears (as `flowers deploy` writes it: complete, then renamed in)
        (base / ".2.tmp").symlink_to(live["model"]["version_path"], target_is_directory=True)
        os.rename(base / ".2.tmp", base / "2")
        with client.GrpcClient(grpc_addr) as api:
            wait_for(lambda: api.predict_response(image, model=MODEL).model_spec.version.value == 2,
                     what="version 2 to serve latest")
            states = {e["version"]: e["state"] for e in api.status(MODEL)["model_version_status"]}
            assert states == {"2": "AVAILABLE", "1": "AVAILABLE"}
            assert api.predict_response(image, model=MODEL, label="stable").model_spec.version.value == 1
            # 2. the config moves the label and then drops version 1, without a restart
            cfg = model_config.load(str(config))
            model_config.find(cfg, MODEL).version_labels["stable"] = 2
            model_config.save(str(config), cfg)
            wait_for(lambda: api.predict_response(image, model=MODEL, label="stable").model_spec.version.value == 2,
                     what="label stable -> 2")
            policy = model_config.find(cfg, MODEL).model_version_policy
            policy.specific.versions[:] = [2]
            model_config.save(str(config), cfg)
            wait_for(lambda: {e["version"]: e["state"] for e in api.status(MODEL)["model_version_status"]}
                     == {"2": "AVAILABLE", "1": "END"}, what="version 1 unloaded")
            with pytest.raises(client.ServingError) as err:
                api.predict(image, model=MODEL, version=1)
            assert err.value.status == "NOT_FOUND"
    finally:
        stop.set()
        asker.join()
    assert statuses and set(statuses) == {"OK"}, [s for s in statuses if s != "OK"][:3]


def test_batch_queue_isolates_a_failing_request_and_pads_to_allowed_sizes():
    """The batching logic alone, on a plain function standing in for the model."""
    import asyncio
    import concurrent.futures

    calls = []

    def model(inputs):
        calls.append(len(inputs["x"]))
        if (inputs["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": inputs["x"] * 2}

    params = protos.parse("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 100000 }\n"
                          "num_batch_threads { value: 1 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 4",
                          protos.BatchingParameters)

    async def scenario():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            queue = batching.BatchQueue(batching.Scheduler(batching.Options.from_proto(params), pool), model)
            jobs = [queue.submit({"x": np.array([v])}, 1) for v in (1, 2, -3)]
            return await asyncio.gather(*jobs, return_exceptions=True)

    first, second, third = asyncio.run(scenario())
    assert first["y"].tolist() == [2] and second["y"].tolist() == [4]
    assert isinstance(third, ValueError)
    assert calls == [4, 1, 1, 1]  # one padded batch of 3 -> 4 fails, then each request alone


def test_the_serve_images_config_files_parse_with_tf_servings_protos():
    folder = ROOT / "containers" / "serve"
    cfg = model_config.load(str(folder / "models.config"))
    flowers = model_config.find(cfg, "flowers")
    assert flowers.base_path == "/models/flowers" and dict(flowers.version_labels) == {"stable": 1}
    options = batching.Options.from_proto(protos.load_batching(str(folder / "batching.config")))
    assert options.max_batch_size == 8 and options.num_batch_threads == 2
    prometheus = protos.load_monitoring(str(folder / "monitoring.config")).prometheus_config
    assert prometheus.enable and prometheus.path == "/monitoring/prometheus/metrics"
    dockerfile = (folder / "Dockerfile").read_text()
    for flag in ("--model_config_file=/config/models.config", "--enable_batching=true",
                 "--batching_parameters_file=/config/batching.config",
                 "--monitoring_config_file=/config/monitoring.config"):
        assert flag in dockerfile


def test_a_version_that_fails_to_load_is_reported_and_the_others_still_served(exported_model, tmp_path):
    import asyncio
    import concurrent.futures

    from flowers.serving import models

    base = tmp_path / MODEL
    base.mkdir()
    (base / "1").symlink_to(exported_model["version_path"], target_is_directory=True)
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
    (base / "notes").mkdir()  # not a version: ignored
    config = model_config.single_model(MODEL, str(base))
    model_config.find(config, MODEL).model_version_policy.all.SetInParent()

    async def scenario():
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            manager = models.Manager(config, model_executor=pool, load_executor=pool)
            await manager.start()
            await manager.sync()  # not retried before --load_retry_interval_micros
            return manager

    manager = asyncio.run(scenario())
    status = {s.version: s for s in manager.status(MODEL).model_version_status}
    assert sorted(status) == [1, 2]
    assert status[1].state == models.State.AVAILABLE and status[1].status.error_message == ""
    assert status[2].state == models.State.END and "Failed to load" in status[2].status.error_message
    assert manager.resolve(MODEL).version == 1
    assert manager.model_names() == {MODEL}


@pytest.mark.parametrize("arr", [
    np.array([b"1", b"abc"], object), np.array([3, 1], np.int64), np.arange(10, dtype=np.float32).reshape(2, 5) / 3,
    np.array([0.1, 2.5], np.float64), np.array([[1, 2]], np.int32), np.zeros((0, 5), np.float32),
    np.array(b"x", object), np.array(["text"], object), np.array([True]), np.array([1.5], np.float16)],
    ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_grpc_outputs_are_the_tensor_protos_tf_builds(arr):
    """The fast path for float/int/bytes outputs and tf.make_tensor_proto (values moved to the
    typed field) give the same message, so clients read the same float_val/string_val."""
    expected = tf.make_tensor_proto(arr)
    field = grpc_service._TYPED_FIELDS[tf.dtypes.as_dtype(expected.dtype)]
    if expected.tensor_content and field != "half_val":
        expected.tensor_content = b""
        getattr(expected, field).extend(arr.ravel().tolist())
    assert grpc_service.tensor_proto(arr) == expected
