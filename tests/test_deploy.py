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
    rows = {line.split()[0]: line.split()[1] for line in out[2:]}  # version -> served
    assert rows == {"1": "no", "2": "yes", "3": "yes"}
    assert out[3].split()[-1] == "stable"  # version 2's row ends with its label


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
    assert isinstance(stores.open_store("gs://b/models/models.config"), stores.GcsStore)
    assert isinstance(stores.open_store("/srv/models.config"), stores.FileStore)
    store = stores.open_store("configmap://serving/flowers-models")
    assert (store.namespace, store.name, store.key) == ("serving", "flowers-models", "models.config")
    for bad in ("configmap://flowers", "configmap:///x", "configmap://a/b/c"):
        with pytest.raises(stores.StoreError, match="configmap://NAMESPACE/NAME"):
            stores.open_store(bad)
    assert deploy.default_config_path("gs://b/models/flowers/") == "gs://b/models/models.config"


# -- Concurrent and interrupted deploys (issue 11) ---------------------------------------------------

def _add_labels(args):
    """Child process: add `count` labels named after `who` to models.config, one update each."""
    config_path, who, count = args
    store = stores.open_store(config_path)
    for i in range(count):
        versions.update(store, "flowers", lambda m: m.version_labels.__setitem__(f"{who}-{i}", 1),
                        base_path="/models/flowers")


def test_concurrent_updates_of_a_local_config_lose_no_label(tmp_path):
    import multiprocessing

    config_path, writers, per_writer = str(tmp_path / "models.config"), 6, 25
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(writers) as pool:
        pool.map(_add_labels, [(config_path, f"w{n}", per_writer) for n in range(writers)])
    labels = model_config.find(stores.load(config_path), "flowers").version_labels
    assert len(labels) == writers * per_writer
    assert not list(tmp_path.glob("models.config.tmp-*"))


class FakeGcs:
    """In-memory stand-in for google-cloud-storage's generation preconditions (no GCS here):
    blob.reload / generation / download_as_bytes / upload_from_string(if_generation_match)."""

    def __init__(self):
        self.objects = {}  # name -> (generation, bytes)

    def bucket(self, _name):
        return self

    def blob(self, name):
        from google.api_core import exceptions

        gcs = self

        class Blob:
            generation = None

            def reload(self):
                if name not in gcs.objects:
                    raise exceptions.NotFound(name)
                self.generation = gcs.objects[name][0]

            def download_as_bytes(self, if_generation_match=None):
                generation, data = gcs.objects[name]
                if if_generation_match is not None and if_generation_match != generation:
                    raise exceptions.PreconditionFailed(name)
                return data

            def upload_from_string(self, data, content_type=None, if_generation_match=None):
                current = gcs.objects.get(name, (0, b""))[0]
                if if_generation_match is not None and if_generation_match != current:
                    raise exceptions.PreconditionFailed(name)
                gcs.objects[name] = (current + 1, data)

        return Blob()


def test_gcs_config_writes_are_conditional_and_retried_on_conflict():
    gcs = FakeGcs()
    a, b = (stores.GcsStore("gs://bucket/models.config", client=gcs) for _ in range(2))

    def add(label):
        return lambda text: versions.edit_text(text, "flowers", lambda m: m.version_labels.__setitem__(label, 1),
                                               base_path="gs://bucket/models/flowers")

    text = a.read()  # a reads (nothing yet) ...
    b.update(add("canary"))  # ... b writes meanwhile ...
    with pytest.raises(stores.Conflict):  # ... so a's blind write would lose b's label: refused
        a.write(add("stable")(text)[0])
    calls = []

    def racing(text):  # the first attempt loses a race with b, the retry wins
        if not calls:
            b.update(add("previous"))
        calls.append(text)
        return add("stable")(text)

    a.update(racing)
    assert len(calls) == 2
    labels = model_config.find(model_config.parse(b.read()), "flowers").version_labels
    assert dict(labels) == {"canary": 1, "previous": 1, "stable": 1}


def test_next_deploy_removes_what_killed_deploys_left(tmp_path):
    src = tmp_path / "export" / "1"
    src.mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"not loaded by deploy")
    base = tmp_path / "models" / "flowers"
    now = int(time.time())
    stale = [base / ".incoming-2-deadbeef", base / f".incoming-3-{now - 7200}-0123abcd"]
    fresh = base / f".incoming-4-{now}-4567cdef"  # another deploy copying right now
    for folder in (*stale, fresh):
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"x" * 1000)
    config = tmp_path / "models" / "models.config"
    left = tmp_path / "models" / "models.config.tmp-4242"
    left.write_text("half")
    assert deploy.deploy(str(src), str(base)) == 1
    assert not any(p.exists() for p in stale) and not left.exists()
    assert fresh.exists() and (base / "1" / "saved_model.pb").exists()
    assert dict(model_config.find(stores.load(str(config)), "flowers").version_labels) == {"stable": 1}
    assert sorted(p.name for p in base.iterdir()) == sorted(["1", fresh.name])
