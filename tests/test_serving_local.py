"""`flowers serve` and the export as TF Serving's stand-in, beyond the wire contract: the serve
image's pins and warmup, the export's classify signature and warmup file, start-up (taken ports,
model name, the ready line)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from flowers import testing
from flowers.core import defaults
from flowers.serving import protos, server, warmup
from flowers.serving.servable import Servable
from flowers.train import export

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "containers" / "serve"


def _pin(text, pattern):
    match = re.search(pattern, text, re.M)
    assert match, pattern
    return match[1]


def test_tf_serving_pins_agree_with_the_exporting_tensorflow():
    image = _pin((SERVE / "Dockerfile").read_text(), r"^ARG TF_SERVING_VERSION=(\S+)")
    kserve = _pin((ROOT / "k8s" / "kserve" / "inferenceservice.yaml").read_text(), r'runtimeVersion:\s*"?([\w.]+)')
    exporting = _pin((ROOT / "containers" / "train" / "requirements.txt").read_text(), r"^tensorflow==(\S+)")
    apis = _pin((SERVE / "requirements.txt").read_text(), r"^tensorflow-serving-api==(\S+)")
    assert image == kserve == apis
    assert image.split(".")[:2] == exporting.split(".")[:2]


def test_serve_image_warms_up_every_allowed_batch_size():
    assert "--enable_model_warmup=true" in (SERVE / "Dockerfile").read_text()
    params = protos.load_batching(str(SERVE / "batching.config"))
    assert set(params.allowed_batch_sizes) <= set(export.WARMUP_BATCH_SIZES)
    assert max(export.WARMUP_BATCH_SIZES) == params.max_batch_size.value


def test_export_has_a_classify_signature_and_a_warmup_file(exported_model):
    path = exported_model["version_path"]
    saved = saved_model_pb2.SavedModel.FromString((Path(path) / "saved_model.pb").read_bytes())
    classify = saved.meta_graphs[0].signature_def[defaults.CLASSIFY_SIGNATURE]
    assert classify.method_name == "tensorflow/serving/classify"
    assert list(classify.inputs) == ["inputs"] and set(classify.outputs) == {"classes", "scores"}
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(str(Path(path) / warmup.WARMUP_FILE))]
    sizes = [log.predict_log.request.inputs["image_bytes"].tensor_shape.dim[0].size
             for log in logs if log.HasField("predict_log")]
    assert tuple(sizes) == export.WARMUP_BATCH_SIZES
    assert [log.WhichOneof("log_type") for log in logs].count("classify_log") == 1
    servable = Servable("flowers", 1, path)
    try:
        assert warmup.replay(servable) == len(logs)
    finally:
        servable.close()


def _serve(args, timeout_s=120):
    return subprocess.run([sys.executable, "-m", "flowers", "serve", *args], capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_a_taken_port_is_refused_at_once_before_loading(exported_model):
    with testing.running(["--model_base_path", exported_model["base_path"]]) as (_rest, grpc_addr):
        port = grpc_addr.rsplit(":", 1)[1]
        done = _serve(["--port", port, "--rest_api_port", str(testing.free_port()),
                       "--model_base_path", exported_model["base_path"]])
    assert done.returncode == 1
    lines = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if "flowers" in line]
    assert lines == [f"flowers serve: cannot bind gRPC to 127.0.0.1:{port}: Address already in use; "
                     "is another flowers serve running there?"]
    assert "loading" not in done.stderr


def test_model_base_path_alone_serves_the_clients_default_name(exported_model, tmp_path):
    proc, rest_url, _ = testing.start_subprocess(["--model_base_path", exported_model["base_path"]])
    try:
        from flowers.predict import client

        with client.RestClient(rest_url) as api:
            assert api.status()["model_version_status"][0]["state"] == "AVAILABLE"  # model "flowers"
        log = Path(proc.log_path).read_text()
        version = exported_model["version"]
        assert f"{server.READY}: grpc=" in log and f"models: flowers (versions {version})" in log
    finally:
        testing.stop_subprocess(proc)
    empty = tmp_path / "empty"
    empty.mkdir()
    proc, _, _ = testing.start_subprocess(["--model_base_path", str(empty)])
    try:
        log = Path(proc.log_path).read_text()
        assert server.NO_VERSIONS in log and f"flowers under {empty}" in log and server.READY not in log
    finally:
        testing.stop_subprocess(proc)


def test_prefer_tflite_model_is_refused_clearly():
    with pytest.raises(SystemExit) as exit_:
        server.parse_args(["--model_base_path", "/x", "--prefer_tflite_model"])
    assert exit_.value.code == 2
    assert server.parse_args(["--model_base_path", "/x", "--grpc_channel_arguments",
                              "grpc.max_concurrent_streams=10,grpc.primary_user_agent=x"]).grpc_options \
        == [("grpc.max_concurrent_streams", 10), ("grpc.primary_user_agent", "x")]
