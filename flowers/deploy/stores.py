"""Where models.config lives: a file (local or gs://) or key `models.config` of a Kubernetes
ConfigMap, written `configmap://NAMESPACE/NAME` (the one the k8s/ manifests mount at /config).
Both stores read and write text; `flowers.deploy.versions` edits it the same way for both.

Edits are read-modify-write, so every store's `update(fn)` makes concurrent deploys safe: a
lock for local files, the object generation as a precondition on gs://, resourceVersion for a
ConfigMap, each retried on conflict. Files a killed edit left behind are removed by the next."""
import contextlib
import fcntl
import glob as globlib
import logging
import os
import random
import time

from flowers.core import model_config, storage

CONFIGMAP_SCHEME = "configmap://"
CONFIGMAP_KEY = "models.config"
DEFAULT_NAMESPACE = "flowers"
CONFLICT_RETRIES = 10

log = logging.getLogger(__name__)


class StoreError(Exception):
    """A store that cannot be used: no cluster reachable, a bad configmap:// location, a conflict."""


class Conflict(StoreError):
    """Someone else changed the config between our read and our write."""


def _retry_on_conflict(store, fn):
    """read -> fn(text) -> (new text, result) -> conditional write, again while it conflicts."""
    for attempt in range(CONFLICT_RETRIES):
        text = store.read()
        new_text, result = fn(text)
        try:
            store.write(new_text)
            return result
        except Conflict:
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))  # let the other writer finish
    raise StoreError(f"{store} kept changing while we edited it ({CONFLICT_RETRIES} tries); run the command again")


class FileStore:
    """models.config as a local file: edits under an exclusive lock (`PATH.lock`)."""

    def __init__(self, path):
        self.path = path

    def __str__(self):
        return self.path

    def read(self):
        return storage.read_text(self.path) if storage.exists(self.path) else None

    def write(self, text):
        # Write a sibling then rename, so a server polling the file never reads half of it.
        tmp = f"{self.path}.tmp-{os.getpid()}-{random.getrandbits(32):08x}"
        storage.write_text(tmp, text)
        os.replace(tmp, self.path)

    def update(self, fn):
        with self._locked():
            for stale in globlib.glob(globlib.escape(self.path) + ".tmp-*"):  # a killed edit's; we hold the lock
                log.info("removing %s, left by an interrupted edit", stale)
                with contextlib.suppress(OSError):
                    os.remove(stale)
            text = self.read()
            new_text, result = fn(text)
            self.write(new_text)
            return result

    @contextlib.contextmanager
    def _locked(self):
        storage.makedirs(storage.dirname(self.path))
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if we are killed
            yield
        finally:
            os.close(fd)


class GcsStore:
    """models.config as a gs:// object: written only if its generation is still the one we read
    (0: only if it does not exist), so two deploys cannot both win; the loser re-reads and retries."""

    def __init__(self, path, client=None):
        self.path = path
        self.bucket_name, _, self.name = path[len("gs://"):].partition("/")
        self._client, self._generation = client, None

    def __str__(self):
        return self.path

    def blob(self):
        if self._client is None:
            from google.cloud import storage as gcs

            self._client = gcs.Client()
        return self._client.bucket(self.bucket_name).blob(self.name)

    def read(self):
        from google.api_core import exceptions

        blob = self.blob()
        try:
            blob.reload()
        except exceptions.NotFound:
            self._generation = 0
            return None
        self._generation = blob.generation
        return blob.download_as_bytes(if_generation_match=blob.generation).decode("utf-8")

    def write(self, text):
        from google.api_core import exceptions

        if self._generation is None:
            self.read()
        try:
            self.blob().upload_from_string(text.encode("utf-8"), content_type="text/plain",
                                           if_generation_match=self._generation)
        except exceptions.PreconditionFailed:
            raise Conflict(f"{self} changed since it was read") from None

    def update(self, fn):
        return _retry_on_conflict(self, fn)


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

    def update(self, fn):
        return _retry_on_conflict(self, fn)

    def _call(self, what, fn, *args):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=30)
        except ApiException as e:
            if e.status == 404:
                raise StoreError(f"ConfigMap {self} not found (kubectl apply -k k8s/... creates it)") from None
            if e.status == 409:
                raise Conflict(f"ConfigMap {self} changed while we edited it; run the command again") from None
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
    if str(location).startswith("gs://"):
        return GcsStore(str(location))
    return FileStore(str(location))


def load(location):
    """The ModelServerConfig at a location (empty if the file does not exist yet)."""
    return model_config.parse(open_store(location).read() or "")
