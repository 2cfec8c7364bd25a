"""k8s/: every kustomization renders (kubectl's built-in kustomize), every rendered object
validates against the Kubernetes 1.32 schemas in strict mode (kubernetes-validate), and the
facts that matter for TF Serving hold in the rendered output, not just in the sources."""
import copy
import json
import pathlib
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

import flowers
from flowers.core import containers, model_config
from flowers.serving import protos

K8S = pathlib.Path(__file__).resolve().parents[1] / "k8s"
SERVE_DIR = K8S.parent / "containers" / "serve"
K8S_VERSION = "1.32.0"  # pinned: GKE's regular channel and the kubectl here are 1.32
SERVING = ("base", "overlays/gpu", "overlays/local")
ALL = SERVING + ("kserve",)
MODEL_STATUS = "/v1/models/flowers"


@pytest.fixture(scope="module")
def rendered():
    """{kustomization: [objects]} rendered by `kubectl kustomize` (kustomize v5 inside kubectl)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: it renders k8s/ (its built-in kustomize); install kubectl")
    out = {}
    for name in ALL:
        run = subprocess.run([kubectl, "kustomize", str(K8S / name)], capture_output=True, text=True)
        assert run.returncode == 0, f"kubectl kustomize k8s/{name} failed:\n{run.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    return out


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(docs):
    return one(docs, "Deployment", "flowers-serve")["spec"]["template"]["spec"]


def named(items, name):
    found = [i for i in items if i["name"] == name]
    assert len(found) == 1, f"expected one {name!r}, found {len(found)}"
    return found[0]


def server(docs):
    return named(pod_spec(docs)["containers"], "tf-serving")


def config_maps(docs):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}


def matches(selector, labels):
    return selector and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", SERVING)
def test_every_object_validates_strictly_against_kubernetes_schemas(rendered, name):
    errors = []
    for doc in rendered[name]:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']} {list(e.path)}: {e.message}")
    assert not errors, "\n".join(errors)
    kinds = sorted(d["kind"] for d in rendered[name])
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "ServiceAccount", "NetworkPolicy", "ConfigMap", "Namespace"):
        assert kind in kinds, f"{name} renders no {kind}"
    assert one(rendered[name], "HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"


def test_strict_validation_rejects_a_misspelt_field(rendered):
    """The validator is not a rubber stamp: a typo a lenient API server would drop is an error."""
    deployment = copy.deepcopy(one(rendered["base"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="runAsNonroot"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", SERVING)
def test_references_between_objects_resolve(rendered, name):
    docs = rendered[name]
    deployment = one(docs, "Deployment", "flowers-serve")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert matches(one(docs, "Service")["spec"]["selector"], pod_labels)
    assert matches(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    assert matches(one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], pod_labels)
    target = one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "flowers-serve")
    spec = pod_spec(docs)
    one(docs, "ServiceAccount", spec["serviceAccountName"])
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] not in ("Namespace", "PersistentVolume")}
    assert namespaces == {one(docs, "Namespace")["metadata"]["name"]}

    # Every file a flag names under /config is a key of a ConfigMap projected there.
    cms = config_maps(docs)
    config = named(spec["volumes"], "config")
    keys = {}
    for source in config["projected"]["sources"]:
        assert source["configMap"]["name"] in cms, f"ConfigMap {source['configMap']['name']} not rendered"
        keys.update(cms[source["configMap"]["name"]]["data"])
    container = server(docs)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/config"] == "config"
    files = [a.split("=", 1)[1] for a in container["args"] if a.split("=")[-1].startswith("/config/")]
    assert len(files) == 3
    for path in files:
        assert path.removeprefix("/config/") in keys, f"{path} is in no ConfigMap mounted at /config"

    # Every PVC the pod mounts is rendered; the Service's target ports are the container's ports.
    for volume in spec["volumes"]:
        if "persistentVolumeClaim" in volume:
            one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in one(docs, "Service")["spec"]["ports"]}
    assert service_ports == {"grpc": (8500, "grpc"), "http": (8501, "http")}


@pytest.mark.parametrize("name", SERVING)
def test_tf_serving_runs_from_the_config_map_with_batching_and_monitoring(rendered, name):
    container = server(rendered[name])
    assert set(container["args"]) >= {
        "--port=8500", "--rest_api_port=8501", "--model_config_file=/config/models.config",
        "--model_config_file_poll_wait_seconds=60", "--enable_batching=true",
        "--batching_parameters_file=/config/batching.config", "--monitoring_config_file=/config/monitoring.config"}
    # The same server as `docker run` of the serve image: its ENTRYPOINT and CMD.
    dockerfile = (SERVE_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = dict(line.split(None, 1) for line in dockerfile.splitlines() if line[:1].isupper())
    assert container["command"] == json.loads(instructions["ENTRYPOINT"])
    assert container["args"] == json.loads(instructions["CMD"])
    # models.config must stay live-editable: a fixed ConfigMap name and no subPath mount
    # (kubelet does not update subPath mounts).
    assert "flowers-models" in config_maps(rendered[name])
    assert all("subPath" not in m for m in container["volumeMounts"])


@pytest.mark.parametrize("name", SERVING)
def test_probes_ask_the_rest_model_status(rendered, name):
    container = server(rendered[name])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == MODEL_STATUS, probe
        port = get["port"]
        assert port == 8501 or {p["name"]: p["containerPort"] for p in container["ports"]}[port] == 8501


@pytest.mark.parametrize("name", SERVING)
def test_pods_run_unprivileged(rendered, name):
    assert_unprivileged(pod_spec(rendered[name]))
    namespace = one(rendered[name], "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def assert_unprivileged(spec):
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    assert not any("hostPath" in v for v in spec["volumes"]), "hostPath breaks the restricted Pod Security level"


@pytest.mark.parametrize("name", SERVING)
def test_network_policy_admits_only_the_serving_ports(rendered, name):
    policy = one(rendered[name], "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ports = {(p["port"], p["protocol"]) for rule in policy["ingress"] for p in rule["ports"]}
    assert ports == {(8500, "TCP"), (8501, "TCP")}
    assert all(rule.get("ports") for rule in policy["ingress"]), "an ingress rule without ports opens all"
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 80, 988}  # DNS, HTTPS, the metadata server (Workload Identity)
    assert all(p["port"] in (53, 443) for rule in policy["egress"] if "to" not in rule for p in rule["ports"])


@pytest.mark.parametrize("name", ["base", "overlays/gpu"])
def test_network_policy_admits_the_serving_ports_only_from_labelled_clients(rendered, name):
    """HandleReloadConfigRequest is unauthenticated in TF Serving: no rule may admit everyone."""
    policy = one(rendered[name], "NetworkPolicy")["spec"]
    for rule in policy["ingress"]:
        assert rule.get("from"), "an ingress rule without `from` admits every pod and address"
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            client = {"key": "flowers.io/client", "operator": "In", "values": ["true"]}
            assert peer.get("podSelector") == {"matchExpressions": [client]} or (
                peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "gmp-system"}
                and {p["port"] for p in rule["ports"]} == {8501})


def test_models_config_is_the_serve_images_with_each_overlays_base_path(rendered):
    image_config = model_config.load(str(SERVE_DIR / "models.config"))  # TF Serving's own proto
    for name, base_path in (("base", "gs://BUCKET/models/flowers"), ("overlays/gpu", "gs://BUCKET/models/flowers"),
                            ("overlays/local", "/models/flowers")):
        config = model_config.parse(config_maps(rendered[name])["flowers-models"]["data"]["models.config"])
        assert model_config.find(config, "flowers").base_path == base_path, name
        model_config.find(config, "flowers").base_path = model_config.find(image_config, "flowers").base_path
        assert config == image_config, name
    local = server(rendered["overlays/local"])
    assert {m["mountPath"]: m.get("readOnly") for m in local["volumeMounts"]}["/models"] is True


def test_configs_are_the_serve_images_own(rendered):
    """k8s/base carries copies (kustomize reads only files under its root): they must not drift,
    and they parse as TF Serving's BatchingParameters / MonitoringConfig."""
    for name in ("batching.config", "monitoring.config"):
        assert (K8S / "base" / name).read_text() == (SERVE_DIR / name).read_text(), name
    batching = protos.load_batching(str(K8S / "base" / "batching.config"))
    assert batching.max_batch_size.value > 1
    prometheus = protos.load_monitoring(str(K8S / "base" / "monitoring.config")).prometheus_config
    assert prometheus.enable
    deployment = one(rendered["base"], "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert (deployment["prometheus.io/path"], deployment["prometheus.io/port"]) == (prometheus.path, "8501")
    data = config_maps(rendered["base"])
    data = next(cm["data"] for n, cm in data.items() if n.startswith("flowers-serve-config-"))
    assert set(data) == {"batching.config", "monitoring.config"}


def test_images_are_the_serve_image_at_the_package_version(rendered):
    image = server(rendered["base"])["image"]
    assert image == f"REGION-docker.pkg.dev/PROJECT/flowers/serve:{flowers.__version__}"
    assert containers.image("serve").endswith(f"/flowers/serve:{flowers.__version__}")  # what the pipeline uses
    assert server(rendered["overlays/gpu"])["image"] == image + "-gpu"
    assert server(rendered["overlays/local"])["image"] == f"flowers/serve:{flowers.__version__}"


def test_gpu_overlay_asks_for_a_gpu_node(rendered):
    spec = pod_spec(rendered["overlays/gpu"])
    assert server(rendered["overlays/gpu"])["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"]["cloud.google.com/gke-accelerator"].startswith("nvidia-")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    for name in ("base", "overlays/local"):
        assert "nvidia.com/gpu" not in server(rendered[name])["resources"]["limits"]
        assert "nodeSelector" not in pod_spec(rendered[name])


def test_workload_identity_on_gke_only(rendered):
    for name in ("base", "overlays/gpu"):
        annotations = one(rendered[name], "ServiceAccount")["metadata"]["annotations"]
        assert annotations["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    assert "annotations" not in one(rendered["overlays/local"], "ServiceAccount")["metadata"]


def test_local_overlay_is_small_and_reachable(rendered):
    docs = rendered["overlays/local"]
    service = one(docs, "Service")["spec"]
    assert service["type"] == "NodePort"
    assert {p["name"]: p["nodePort"] for p in service["ports"]} == {"grpc": 30500, "http": 30501}
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 1
    local, base = server(docs)["resources"], server(rendered["base"])["resources"]
    assert local["limits"]["memory"] != base["limits"]["memory"]
    pv = one(docs, "PersistentVolume")
    assert "namespace" not in pv["metadata"]
    assert one(docs, "PersistentVolumeClaim")["spec"]["volumeName"] == pv["metadata"]["name"]


# KServe's InferenceService has no schema in kubernetes-validate: check its required fields here,
# and validate the parts that are plain Kubernetes (the predictor is a PodSpec plus KServe fields,
# its `model` a Container plus KServe fields) against the core schemas.
KSERVE_COMPONENT_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
                           "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
                           "labels", "annotations", "deploymentStrategy", "autoScaling", "workerSpec"}
KSERVE_MODEL_FIELDS = {"modelFormat", "runtime", "runtimeVersion", "storageUri", "protocolVersion", "storage"}


def test_kserve_inference_service_is_well_formed(rendered):
    isvc = one(rendered["kserve"], "InferenceService", "flowers")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["namespace"] == one(rendered["base"], "Namespace")["metadata"]["name"]
    assert set(isvc["spec"]) == {"predictor"}
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "tensorflow"
    base_text = config_maps(rendered["base"])["flowers-models"]["data"]["models.config"]
    assert model["storageUri"] == model_config.find(model_config.parse(base_text), "flowers").base_path
    assert isinstance(predictor["canaryTrafficPercent"], int) and 0 <= predictor["canaryTrafficPercent"] <= 100
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    one(rendered["base"], "ServiceAccount", predictor["serviceAccountName"])

    container = {k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}
    pod = {k: v for k, v in predictor.items() if k not in KSERVE_COMPONENT_FIELDS | {"model"}}
    pod["containers"] = [{"name": "kserve-container", **container}]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "flowers"}, "spec": pod},
                                 K8S_VERSION, strict=True)
    assert container["securityContext"]["runAsNonRoot"] is True


# --- The console (k8s/console/): its own Deployment and ClusterIP Service beside the server. ------

CONSOLE = ("console/base", "console/local")
CONSOLE_DIR = K8S.parent / "containers" / "console"


@pytest.fixture(scope="module")
def console_rendered():
    out = {}
    for name in CONSOLE:
        run = subprocess.run(["kubectl", "kustomize", str(K8S / name)], capture_output=True, text=True)
        assert run.returncode == 0, f"kubectl kustomize k8s/{name} failed:\n{run.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    return out


def selector_labels(selector):
    """A label selector as the labels it requires (matchLabels, and single-value In expressions)."""
    labels = dict(selector.get("matchLabels", {}))
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In" and len(e["values"]) == 1, e
        labels[e["key"]] = e["values"][0]
    return labels


@pytest.mark.parametrize("name", CONSOLE)
def test_console_validates_and_is_hardened_like_the_server(console_rendered, name):
    docs = console_rendered[name]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert sorted(d["kind"] for d in docs) == ["Deployment", "NetworkPolicy", "Service", "ServiceAccount"]
    spec = one(docs, "Deployment", "flowers-console")["spec"]["template"]["spec"]
    assert_unprivileged(spec)
    assert all("subPath" not in m for c in spec["containers"] for m in c["volumeMounts"])


@pytest.mark.parametrize("name,serving", [("console/base", "base"), ("console/local", "overlays/local")])
def test_console_reaches_the_server_and_reads_its_live_config(console_rendered, rendered, name, serving):
    docs, served = console_rendered[name], rendered[serving]
    deployment = one(docs, "Deployment", "flowers-console")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = one(docs, "Service", "flowers-console")["spec"]
    assert service["type"] == "ClusterIP" and matches(service["selector"], pod_labels)
    spec = deployment["spec"]["template"]["spec"]
    container = named(spec["containers"], "console")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["targetPort"]: p["port"] for p in service["ports"]} == {"http": 8080} and ports == {"http": 8080}
    # The console image's ENTRYPOINT, then the server's Service and the live models.config.
    dockerfile = (CONSOLE_DIR / "Dockerfile").read_text()
    entrypoint = next(line.split(None, 1)[1] for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT"))
    assert container["command"] == json.loads(entrypoint)
    http = {p["name"]: p["port"] for p in one(served, "Service", "flowers-serve")["spec"]["ports"]}["http"]
    assert f"--server=http://flowers-serve:{http}" in container["args"]
    assert "--model_config_file=/config/models.config" in container["args"]
    config = named(spec["volumes"], "config")["configMap"]["name"]
    assert config == "flowers-models" and "models.config" in config_maps(served)[config]["data"]
    one(docs, "ServiceAccount", spec["serviceAccountName"])
    namespace = one(served, "Namespace")["metadata"]["name"]
    assert {d["metadata"]["namespace"] for d in docs} == {namespace}
    # Network: only the page comes in; the server's REST port is reachable from here.
    policy = one(docs, "NetworkPolicy", "flowers-console")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], pod_labels)
    assert {(p["port"], p["protocol"]) for rule in policy["ingress"] for p in rule["ports"]} == {(8080, "TCP")}
    serve_pods = one(served, "Deployment", "flowers-serve")["spec"]["template"]["metadata"]["labels"]
    assert any(matches(selector_labels(peer.get("podSelector", {})), serve_pods) and
               {"port": 8501, "protocol": "TCP"} in rule["ports"]
               for rule in policy["egress"] for peer in rule.get("to", []))
    # Local: the version folders (eval files) from the server's claim, read-only.
    if name == "console/local":
        one(served, "PersistentVolumeClaim", named(spec["volumes"], "models")["persistentVolumeClaim"]["claimName"])
        assert {m["mountPath"]: m.get("readOnly") for m in container["volumeMounts"]}["/models"] is True
        assert "annotations" not in one(docs, "ServiceAccount")["metadata"]
        assert container["image"] == f"flowers/console:{flowers.__version__}"
    else:
        assert container["image"] == f"REGION-docker.pkg.dev/PROJECT/flowers/console:{flowers.__version__}"
        assert one(docs, "ServiceAccount")["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]


def test_project_settings_flow_in_through_replacements_not_sed(tmp_path):
    """A user's bucket and service account in k8s/base/gcp.env reach models.config and the
    ServiceAccount in every GKE render; the settings ConfigMap itself is never applied."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "base" / "gcp.env").write_text("model_base_path=gs://my-bucket/models/flowers\n"
                                           "gcp_service_account=flowers-serve@my-proj.iam.gserviceaccount.com\n")
    for name in ("base", "overlays/gpu"):
        run = subprocess.run([shutil.which("kubectl"), "kustomize", str(copy / name)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        docs = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
        models = model_config.parse(config_maps(docs)["flowers-models"]["data"]["models.config"])
        assert model_config.find(models, "flowers").base_path == "gs://my-bucket/models/flowers", name
        annotations = one(docs, "ServiceAccount")["metadata"]["annotations"]
        assert annotations["iam.gke.io/gcp-service-account"] == "flowers-serve@my-proj.iam.gserviceaccount.com"
        assert "flowers-gcp" not in config_maps(docs)
    readme = (K8S.parent / "README.md").read_text()
    assert "| sed" not in readme and "kustomize edit set image" in readme
