"""Where models.config lives: a file (local or gs://) or key `models.config` of a Kubernetes
ConfigMap, written `configmap://NAMESPACE/NAME` (the one the k8s/ manifests mount at /config).
Both stores read and write text; `flowers.deploy.versions` edits it the same way for both."""
import os

from flowers.core import model_config, storage

CONFIGMAP_SCHEME = "configmap://"
CONFIGMAP_KEY = "models.config"
DEFAULT_NAMESPACE = "flowers"


class StoreError(Exception):
    """A store that cannot be used: no cluster reachable, a bad configmap:// location, a conflict."""


class FileStore:
    """models.config as a file, local or gs://."""

    def __init__(self, path):
        self.path = path

    def __str__(self):
        return self.path

    def read(self):
        return storage.read_text(self.path) if storage.exists(self.path) else None

    def write(self, text):
        # Write a sibling then rename, so a server polling the file never reads half of it.
        tmp = f"{self.path}.tmp-{os.getpid()}"
        storage.write_text(tmp, text)
        storage.gfile.rename(tmp, self.path, overwrite=True)


class ConfigMapStore:
    """models.config as key `models.config` of a ConfigMap, through the Kubernetes API."""

    def __init__(self, namespace, name, key=CONFIGMAP_KEY, api=None):
        self.namespace, self.name, self.key = namespace, name, key
        self._api, self._resource_version = api, None

    def __str__(self):
        return f"{CONFIGMAP_SCHEME}{self.namespace}/{self.name}"

    def api(self):
        if self._api is None:
            self._api = core_api()
        return self._api

    def read(self):
        cm = self._call("read", self.api().read_namespaced_config_map, self.name, self.namespace)
        self._resource_version = cm.metadata.resource_version
        return (cm.data or {}).get(self.key)

    def write(self, text):
        # resourceVersion makes the patch fail (409) if someone changed the ConfigMap since read().
        body = {"metadata": {"resourceVersion": self._resource_version}, "data": {self.key: text}}
        self._call("update", self.api().patch_namespaced_config_map, self.name, self.namespace, body)

    def _call(self, what, fn, *args):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=30)
        except ApiException as e:
            if e.status == 404:
                raise StoreError(f"ConfigMap {self} not found (kubectl apply -k k8s/... creates it)") from None
            if e.status == 409:
                raise StoreError(f"ConfigMap {self} changed while we edited it; run the command again") from None
            raise StoreError(f"cannot {what} ConfigMap {self}: {e.status} {e.reason}") from None
        except HTTPError as e:
            host = self.api().api_client.configuration.host
            raise StoreError(f"cannot reach the Kubernetes API server at {host}: {e}") from None


def core_api():
    """A CoreV1Api from the in-cluster service account, or else the kube config (KUBECONFIG)."""
    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:  # KUBECONFIG read now, not when kubernetes was imported
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    except config.ConfigException as e:
        raise StoreError(f"no Kubernetes cluster configured ({e}); set KUBECONFIG or run "
                           "`gcloud container clusters get-credentials CLUSTER`") from None
    api_client = client.ApiClient()
    api_client.configuration.retries = 1  # a dead server fails fast instead of urllib3's 3 retries
    return client.CoreV1Api(api_client)


def open_store(location):
    """A path (local or gs://) or configmap://NAMESPACE/NAME."""
    if str(location).startswith(CONFIGMAP_SCHEME):
        namespace, _, name = str(location)[len(CONFIGMAP_SCHEME):].partition("/")
        if not namespace or not name or "/" in name:
            raise StoreError(f"expected {CONFIGMAP_SCHEME}NAMESPACE/NAME, got {location!r}")
        return ConfigMapStore(namespace, name)
    return FileStore(str(location))


def load(location):
    """The ModelServerConfig at a location (empty if the file does not exist yet)."""
    return model_config.parse(open_store(location).read() or "")
