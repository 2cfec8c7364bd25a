"""flowers deploy / flowers versions: versions copied next to a running server, labels moved in
models.config, and the server (polling its config and base path) answering from the version
the `stable` label names after each step; the ConfigMap path up to where a cluster is needed."""
import base64
import json
import pathlib
import time
import urllib.error
import urllib.request

import grpc
import pytest
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

from flowers import testing
from flowers.core import model_config, storage
from flowers.deploy import publish as deploy, stores, versions

WAIT_S = 120  # a generous bound for a server on a shared 2-core machine; not a timing assertion


def get_json(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
        return json.loads(r.read())


def wait_for(what, check):
    """Poll check() until it returns a truthy value; fail with the last answer after WAIT_S."""
    deadline, last = time.monotonic() + WAIT_S, None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = e
        time.sleep(0.5)
    pytest.fail(f"gave up waiting for {what}; last answer: {last!r}")


def label_version(rest, label):
    """The version TF Serving's model status reports for a label, if it is AVAILABLE."""
    status = get_json(f"{rest}/v1/models/flowers/labels/{label}")["model_version_status"]
    available = [int(s["version"]) for s in status if s["state"] == "AVAILABLE"]
    return available[0] if len(available) == 1 else None


def grpc_label_version(grpc_addr, label):
    """The version gRPC GetModelMetadata resolves a label to (model_spec.version)."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name, request.model_spec.version_label = "flowers", label
    with grpc.insecure_channel(grpc_addr) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.GetModelMetadata(request, timeout=30).model_spec.version.value


def read_model(config_path):
    return model_config.find(model_config.load(str(config_path)), "flowers")


@pytest.fixture()
def serving_dir(tmp_path):
    return {"base": str(tmp_path / "models" / "flowers"), "config": str(tmp_path / "models" / "models.config")}


def test_deploy_set_default_and_rollback_on_a_running_server(exported_model, serving_dir):
    base, config = serving_dir["base"], serving_dir["config"]
    photo = exported_model["held_out"]["roses"][0]

    # Version 1 from a version folder; the config is created beside the base path.
    assert deploy.deploy(exported_model["version_path"], base) == 1
    assert deploy.default_config_path(base) == config
    model = read_model(config)
    assert (model.base_path, dict(model.version_labels), list(model.model_version_policy.specific.versions)) \
        == (base, {"stable": 1}, [1])

    with testing.running(["--model_config_file", config, "--model_config_file_poll_wait_seconds", "1",
                         "--file_system_poll_wait_seconds", "1"]) as (rest, grpc_addr):
        assert wait_for("stable = 1", lambda: label_version(rest, "stable") == 1)
        assert grpc_label_version(grpc_addr, "stable") == 1

        # Version 2 from the export's parent folder (its highest version), while the server runs.
        assert deploy.main(["--model_dir", exported_model["base_path"], "--model_base_path", base]) == 0
        assert wait_for("stable = 2", lambda: label_version(rest, "stable") == 2)
        assert grpc_label_version(grpc_addr, "stable") == 2
        assert label_version(rest, "previous") == 1  # kept loaded: rollback needs no load
        answer = get_json(f"{rest}/v1/models/flowers/labels/stable:predict",
                          {"instances": [{"key": "k", "image_bytes": {"b64": base64.b64encode(
                              open(photo, "rb").read()).decode()}}]})
        assert answer["predictions"][0]["key"] == "k"
        assert answer["predictions"][0]["label"] in exported_model["labels"]

        assert versions.main(["set-default", "1", "--model_config_file", config]) == 0
        assert wait_for("stable = 1 again", lambda: label_version(rest, "stable") == 1)
        assert label_version(rest, "previous") == 2
        assert grpc_label_version(grpc_addr, "stable") == 1

        assert versions.main(["rollback", "--model_config_file", config]) == 0
        assert wait_for("stable = 2 after rollback", lambda: label_version(rest, "stable") == 2)
        assert label_version(rest, "previous") == 1
        assert grpc_label_version(grpc_addr, "stable") == 2
    # Nothing half-written is left in the base path: only the two versions.
    assert storage.listdir(base) == ["1", "2"]
    src = pathlib.Path(exported_model["version_path"])
    for version in ("1", "2"):
        copied = pathlib.Path(base, version)
        assert sorted(p.relative_to(copied) for p in copied.rglob("*")) == sorted(p.relative_to(src) for p in src.rglob("*"))
        assert (copied / "saved_model.pb").read_bytes() == (src / "saved_model.pb").read_bytes()


def test_versions_cli_lists_and_refuses_what_cannot_be_done(exported_model, serving_dir, capsys):
    base, config = serving_dir["base"], serving_dir["config"]
    assert versions.main(["rollback", "--model_config_file", config]) == 1  # no config yet
    assert deploy.deploy(exported_model["version_path"], base, config_path=config) == 1
    assert deploy.deploy(exported_model["version_path"], base, label="canary", config_path=config) == 2
    capsys.readouterr()

    assert versions.main(["list", "--model_config_file", config]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: [line.split()[1], line.split()[-1]] for line in out[2:]}  # version: served, labels
    assert rows == {"1": ["yes", "stable"], "2": ["yes", "canary"]}

    before = pathlib.Path(config).read_text()
    assert versions.main(["set-default", "7", "--model_config_file", config]) == 1
    assert "version 7 does not exist" in capsys.readouterr().err
    assert versions.main(["rollback", "--model_config_file", config]) == 1
    assert "nothing to roll back to" in capsys.readouterr().err
    assert pathlib.Path(config).read_text() == before  # refused edits write nothing

    # Promoting the canary: stable -> 2, previous -> 1, the canary label goes.
    assert versions.main(["set-default", "2", "--model_config_file", config]) == 0
    model = read_model(config)
    assert dict(model.version_labels) == {"stable": 2, "previous": 1}
    assert list(model.model_version_policy.specific.versions) == [1, 2]


def test_versions_list_follows_a_latest_n_policy(tmp_path, capsys):
    """Under `latest { num_versions: 2 }` the two highest versions are served (the old listing
    marked only the highest one)."""
    base = tmp_path / "flowers"
    for v in (1, 2, 3):
        (base / str(v)).mkdir(parents=True)
        (base / str(v) / "saved_model.pb").write_bytes(b"")
    testing.write_config_files(str(tmp_path), "flowers", base, labels={"stable": 2},
                               policy="latest { num_versions: 2 }", metrics_path=None)
    assert versions.main(["list", "--model_config_file", str(tmp_path / "models.config")]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in out[2:]}
    assert rows == {"1": ["no"], "2": ["yes", "stable"], "3": ["yes"]}


def test_version_dir_takes_a_version_folder_or_the_highest_in_its_parent(exported_model, tmp_path):
    assert deploy.version_dir(exported_model["version_path"]) == exported_model["version_path"]
    parent = tmp_path / "model"
    for v in ("3", "12"):
        storage.copy_tree(exported_model["version_path"], str(parent / v))
    (parent / "99").mkdir()  # not a SavedModel: ignored
    assert deploy.version_dir(str(parent)) == str(parent / "12")
    with pytest.raises(versions.VersionError, match="not a SavedModel"):
        deploy.version_dir(str(tmp_path / "nothing-here"))
    assert deploy.main(["--model_dir", str(tmp_path), "--model_base_path", str(tmp_path / "b")]) == 1


def test_label_edits_keep_the_labelled_versions_served():
    text = model_config.to_text(model_config.single_model("flowers", "gs://b/models/flowers"))
    steps = [
        (lambda m: versions.set_default(m, 1), {"stable": 1}),
        (lambda m: versions.set_label(m, "canary", 2), {"stable": 1, "canary": 2}),
        (lambda m: versions.set_default(m, 3), {"stable": 3, "previous": 1, "canary": 2}),
        (versions.rollback, {"stable": 1, "previous": 3, "canary": 2}),
        (versions.rollback, {"stable": 3, "previous": 1, "canary": 2}),  # undo the undo
        (lambda m: versions.set_default(m, 2), {"stable": 2, "previous": 3}),  # canary promoted
        (lambda m: versions.set_default(m, 2), {"stable": 2, "previous": 3}),  # idempotent
    ]
    for edit, expected in steps:
        text, _ = versions.edit_text(text, "flowers", edit)
        model = model_config.find(model_config.parse(text), "flowers")
        assert dict(model.version_labels) == expected
        assert list(model.model_version_policy.specific.versions) == sorted(set(expected.values()))
        assert model.base_path == "gs://b/models/flowers"
    with pytest.raises(versions.VersionError, match="not in the config"):
        versions.edit_text(text, "daisies", versions.rollback)


@pytest.fixture()
def no_cluster_env(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return monkeypatch


def test_configmap_without_any_cluster_config_fails_clearly(no_cluster_env, tmp_path, capsys):
    no_cluster_env.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    store = stores.open_store("configmap://flowers/flowers-models")
    with pytest.raises(stores.StoreError, match="no Kubernetes cluster configured"):
        store.read()
    assert versions.main(["list", "--configmap", "flowers-models"]) == 1
    assert "no Kubernetes cluster configured" in capsys.readouterr().err

    # In a pod without a service account token, the in-cluster path says so too.
    no_cluster_env.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    no_cluster_env.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(stores.StoreError, match="no Kubernetes cluster configured"):
        stores.open_store("configmap://flowers/flowers-models").read()


def test_configmap_with_an_unreachable_api_server_fails_clearly_and_deploys_nothing(
        no_cluster_env, exported_model, tmp_path, capsys):
    """The real kubernetes client, pointed at a closed loopback port: a clear error, no copy."""
    port = testing.free_port()  # nothing listens there now
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}]}))
    no_cluster_env.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(stores.StoreError, match=f"cannot reach the Kubernetes API server at https://127.0.0.1:{port}"):
        stores.open_store("configmap://flowers/flowers-models").read()

    base = tmp_path / "models" / "flowers"
    assert deploy.main(["--model_dir", exported_model["version_path"], "--model_base_path", str(base),
                        "--configmap", "flowers-models", "--namespace", "flowers"]) == 1
    assert "cannot reach the Kubernetes API server" in capsys.readouterr().err
    assert not base.exists()  # the config was checked before anything was copied


def test_config_locations():
    assert isinstance(stores.open_store("gs://b/models/models.config"), stores.FileStore)
    store = stores.open_store("configmap://serving/flowers-models")
    assert (store.namespace, store.name, store.key) == ("serving", "flowers-models", "models.config")
    for bad in ("configmap://flowers", "configmap:///x", "configmap://a/b/c"):
        with pytest.raises(stores.StoreError, match="configmap://NAMESPACE/NAME"):
            stores.open_store(bad)
    assert deploy.default_config_path("gs://b/models/flowers/") == "gs://b/models/models.config"
