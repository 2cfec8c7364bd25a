"""`flowers versions list|set-default N|rollback`: which model versions TF Serving serves.

What `gcloud ml-engine versions set-default` did, kept in TF Serving's own `models.config`:
- label `stable` is the default version; clients address it as /v1/models/flowers/labels/stable
  (REST) or model_spec.version_label="stable" (gRPC);
- label `previous` is the stable version before it, so `rollback` is a swap of the two
  (like `kubectl rollout undo`: rolling back twice returns to where you were);
- label `canary`, if set, is a version under trial (`flowers deploy --label canary`);
- the version policy serves exactly the labelled versions (`specific { versions: ... }`), so the
  stable version being replaced stays loaded (as `previous`) while TF Serving loads the new one:
  TF Serving moves a label only to a loaded version, and does so at its next config poll.
TF Serving answers a request that names no version or label with the highest *loaded* version:
that is the canary, or after a rollback the version rolled back from; clients that mean "the
default version" ask for the `stable` label.

The config lives in a file (local or gs://) or in a Kubernetes ConfigMap, written as
`configmap://NAMESPACE/NAME` (key `models.config`), the one the k8s/ manifests mount at /config.
Both go through the same edit functions; only read/write differ.
"""
import argparse
import os
import sys

from flowers import base_path as layout, model_config, storage

STABLE, PREVIOUS, CANARY = "stable", "previous", "canary"
CONFIGMAP_SCHEME = "configmap://"
CONFIGMAP_KEY = "models.config"
DEFAULT_NAMESPACE = "flowers"


class VersionError(Exception):
    """A request that cannot be carried out (unknown version, nothing to roll back to...)."""


class ClusterError(Exception):
    """No Kubernetes API server could be reached or used."""


# ---------------------------------------------------------------------------------------------
# Edits on one model's ModelConfig: pure functions, the same for a file and a ConfigMap.

def labels(model):
    return dict(model.version_labels)


def served(model):
    """Versions the config asks TF Serving to load; None means its own default (latest)."""
    policy = model.model_version_policy.WhichOneof("policy_choice")
    if policy == "specific":
        return sorted(model.model_version_policy.specific.versions)
    return None if policy in (None, "latest") else policy  # "all"


def _serve_labelled(model):
    versions = sorted(set(model.version_labels.values()))
    model.model_version_policy.specific.versions[:] = versions  # also clears latest/all


def set_label(model, label, version):
    """Point `label` at `version`; `stable` goes through set_default."""
    if label == STABLE:
        return set_default(model, version)
    model.version_labels[label] = int(version)
    _serve_labelled(model)
    return int(version)


def set_default(model, version):
    """stable -> version, previous -> the old stable; a canary promoted to stable loses its label."""
    version = int(version)
    old = model.version_labels.get(STABLE)
    if old is not None and old != version:
        model.version_labels[PREVIOUS] = old
    model.version_labels[STABLE] = version
    if model.version_labels.get(CANARY) == version:
        del model.version_labels[CANARY]
    if model.version_labels.get(PREVIOUS) == version:
        del model.version_labels[PREVIOUS]
    _serve_labelled(model)
    return version


def rollback(model):
    """Swap stable and previous; returns the new stable version."""
    if PREVIOUS not in model.version_labels:
        raise VersionError(f"model {model.name!r} has no '{PREVIOUS}' label: nothing to roll back to "
                           "(use set-default N)")
    old, new = model.version_labels.get(STABLE), model.version_labels[PREVIOUS]
    model.version_labels[STABLE] = new
    if old is None:
        del model.version_labels[PREVIOUS]
    else:
        model.version_labels[PREVIOUS] = old
    _serve_labelled(model)
    return new


def edit_text(text, model_name, edit, base_path=None):
    """Apply edit(model) to the model in a models.config text; returns (new_text, edit's result).

    An empty or missing config, or one without the model, gets the model added with base_path.
    """
    config = model_config.parse(text or "")
    try:
        model = model_config.find(config, model_name)
    except KeyError:
        if base_path is None:
            raise VersionError(f"model {model_name!r} is not in the config") from None
        model = config.model_config_list.config.add(name=model_name, base_path=base_path,
                                                    model_platform="tensorflow")
    result = edit(model)
    return model_config.to_text(config), result


# ---------------------------------------------------------------------------------------------
# Where the config lives.

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
                raise ClusterError(f"ConfigMap {self} not found (kubectl apply -k k8s/... creates it)") from None
            if e.status == 409:
                raise ClusterError(f"ConfigMap {self} changed while we edited it; run the command again") from None
            raise ClusterError(f"cannot {what} ConfigMap {self}: {e.status} {e.reason}") from None
        except HTTPError as e:
            host = self.api().api_client.configuration.host
            raise ClusterError(f"cannot reach the Kubernetes API server at {host}: {e}") from None


def core_api():
    """A CoreV1Api from the in-cluster service account, or else the kube config (KUBECONFIG)."""
    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:  # KUBECONFIG read now, not when kubernetes was imported
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    except config.ConfigException as e:
        raise ClusterError(f"no Kubernetes cluster configured ({e}); set KUBECONFIG or run "
                           "`gcloud container clusters get-credentials CLUSTER`") from None
    api_client = client.ApiClient()
    api_client.configuration.retries = 1  # a dead server fails fast instead of urllib3's 3 retries
    return client.CoreV1Api(api_client)


def open_store(location):
    """A path (local or gs://) or configmap://NAMESPACE/NAME."""
    if str(location).startswith(CONFIGMAP_SCHEME):
        namespace, _, name = str(location)[len(CONFIGMAP_SCHEME):].partition("/")
        if not namespace or not name or "/" in name:
            raise VersionError(f"expected {CONFIGMAP_SCHEME}NAMESPACE/NAME, got {location!r}")
        return ConfigMapStore(namespace, name)
    return FileStore(str(location))


def load(location):
    """The ModelServerConfig at a location (empty if the file does not exist yet)."""
    return model_config.parse(open_store(location).read() or "")


def update(store, model_name, edit, base_path=None):
    """Read, edit one model, write back; returns edit's result."""
    text, result = edit_text(store.read(), model_name, edit, base_path)
    store.write(text)
    return result


# ---------------------------------------------------------------------------------------------
# Versions on disk.

def disk_versions(base_path):
    """Complete version folders under a base path (those with a saved_model.pb)."""
    if not storage.isdir(base_path):
        raise VersionError(f"cannot list versions: {base_path} is not a readable folder "
                           "(pass --model_base_path as seen from this machine)")
    return sorted(layout.scan(base_path))


def check_exists(base_path, version):
    if int(version) not in disk_versions(base_path):
        raise VersionError(f"version {version} does not exist under {base_path}")


# ---------------------------------------------------------------------------------------------
# Command line.

def add_config_args(parser):
    """--model_config_file PATH|configmap://NS/NAME, or --configmap NAME [--namespace NS]."""
    parser.add_argument("--model_config_file", help="models.config: a local or gs:// path, or "
                        f"{CONFIGMAP_SCHEME}NAMESPACE/NAME for a ConfigMap (key {CONFIGMAP_KEY})")
    parser.add_argument("--configmap", help="ConfigMap holding models.config (e.g. flowers-models)")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="the ConfigMap's namespace")
    parser.add_argument("--model_name", default="flowers")


def config_location(args, default=None):
    if args.model_config_file and args.configmap:
        raise VersionError("give --model_config_file or --configmap, not both")
    if args.configmap:
        return f"{CONFIGMAP_SCHEME}{args.namespace}/{args.configmap}"
    if args.model_config_file or default:
        return args.model_config_file or default
    raise VersionError("say where models.config is: --model_config_file PATH or --configmap NAME")


def _base_path(args, model):
    return args.model_base_path or model.base_path


def _list(args, store):
    text = store.read()
    if text is None:
        raise VersionError(f"{store} does not exist")
    model = model_config.find(model_config.parse(text), args.model_name)
    base = _base_path(args, model)
    by_version = {}
    for label, version in sorted(labels(model).items()):
        by_version.setdefault(version, []).append(label)
    disk, policy = disk_versions(base), served(model)
    loaded = set(disk[-1:]) if policy is None else set(disk) if policy == "all" else set(policy)
    print(f"model {model.name}  base path {base}  config {store}")
    print(f"{'version':>8}  {'served':6}  labels")
    for v in sorted(set(disk) | set(by_version)):
        missing = "" if v in disk else "  (missing on disk!)"
        print(f"{v:>8}  {'yes' if v in loaded else 'no':6}  {','.join(by_version.get(v, []))}{missing}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="flowers versions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    for name, help_ in (("list", "versions on disk and their labels"),
                        ("set-default", "point the stable label at version N"),
                        ("rollback", "swap stable and previous")):
        p = sub.add_parser(name, help=help_)
        if name == "set-default":
            p.add_argument("version", type=int)
        add_config_args(p)
        p.add_argument("--model_base_path", help="where the versions are, as seen from this machine "
                       "(default: the model's base_path in the config)")
    args = parser.parse_args(argv)
    try:
        store = open_store(config_location(args))
        if args.action == "list":
            return _list(args, store)
        if args.action == "set-default":
            def edit(model):
                check_exists(_base_path(args, model), args.version)
                return set_default(model, args.version)
        else:
            def edit(model):
                version = rollback(model)
                check_exists(_base_path(args, model), version)
                return version
        version = update(store, args.model_name, edit)
        print(f"{args.model_name}: stable -> version {version} ({store})")
        return 0
    except (VersionError, ClusterError, KeyError) as e:
        print(f"flowers versions: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
