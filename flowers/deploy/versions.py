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
import datetime
import json
import os
import sys
import time

from flowers import cli
from flowers.core import base_path as layout, defaults, model_config, storage
from flowers.core.defaults import CANARY, PREVIOUS, STABLE
from flowers.deploy.stores import CONFIGMAP_KEY, CONFIGMAP_SCHEME, DEFAULT_NAMESPACE, StoreError, open_store



class VersionError(Exception):
    """A request that cannot be carried out (unknown version, nothing to roll back to...)."""


# ---------------------------------------------------------------------------------------------
# Edits on one model's ModelConfig: pure functions, the same for a file and a ConfigMap.

def labels(model):
    return dict(model.version_labels)


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
    parser.add_argument("--model_name", default=defaults.MODEL_NAME)


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


def version_info(path):
    """(eval accuracy from the export's assets.extra/metrics.json or None, creation time as ISO UTC)."""
    accuracy = created = None
    metrics = storage.join(path, "assets.extra", defaults.METRICS_FILE)
    try:
        accuracy = json.loads(storage.read_text(metrics)).get("accuracy") if storage.exists(metrics) else None
    except (OSError, ValueError):
        pass
    saved_model = storage.join(path, "saved_model.pb")
    if not storage.is_remote(path) and os.path.exists(saved_model):
        created = datetime.datetime.fromtimestamp(os.path.getmtime(saved_model), datetime.timezone.utc)
        created = created.isoformat(timespec="seconds")
    return accuracy, created


def server_states(server, model_name):
    """{version: state} as the server reports them (AVAILABLE, LOADING, END...)."""
    from flowers.predict import client

    try:
        status = client.RestClient(server, timeout_s=10).status(model_name)
    except client.ServingError as e:
        raise VersionError(f"{server}: {e.message}") from None
    except OSError as e:
        raise VersionError(f"cannot reach {server} ({cli.one_line(getattr(e, 'reason', e))}); "
                           f"is flowers serve running at {server}?") from None
    return {int(s["version"]): s.get("state", "") for s in status.get("model_version_status", [])}


def _list(args, store):
    text = store.read()
    if text is None:
        raise VersionError(f"{store} does not exist")
    model = model_config.find(model_config.parse(text), args.model_name)
    base = _base_path(args, model)
    by_version = {}
    for label, version in sorted(labels(model).items()):
        by_version.setdefault(version, []).append(label)
    found = layout.scan(base) if storage.isdir(base) else disk_versions(base)
    loaded = model_config.served_versions(model, found)
    states = server_states(args.server, model.name) if args.server else {}
    rows = []
    for v in sorted(set(found) | set(by_version)):
        accuracy, created = version_info(found[v]) if v in found else (None, None)
        rows.append({"version": v, "labels": by_version.get(v, []), "on_disk": v in found,
                     "served_by_config": v in loaded, "accuracy": accuracy, "created": created,
                     **({"server_state": states.get(v, "-")} if args.server else {})})
    if args.format == "json":
        print(json.dumps({"model": model.name, "base_path": base, "config": str(store), "versions": rows}))
        return 0
    print(f"model {model.name}  base path {base}  config {store}")
    server_column = f"{'server':10}  " if args.server else ""
    print(f"{'version':>8}  {'served':6}  {'accuracy':8}  {'created (UTC)':25}  {server_column}labels")
    for row in rows:
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        server = f"{row['server_state']:10}  " if args.server else ""
        missing = "" if row["on_disk"] else "  (missing on disk!)"
        print(f"{row['version']:>8}  {'yes' if row['served_by_config'] else 'no':6}  {accuracy:8}  "
              f"{row['created'] or '-':25}  {server}{','.join(row['labels'])}{missing}")
    return 0


def wait_for_server(server, model_name, version, timeout_s):
    """Until the server's `stable` label answers `version` (it applies models.config at its next
    poll); returns the seconds waited."""
    from flowers.predict import client

    start = time.monotonic()
    api = client.RestClient(server, timeout_s=10)
    last = "no answer"
    while time.monotonic() - start < timeout_s:
        try:
            status = api.status(model_name, label=STABLE)["model_version_status"]
            if int(status[0]["version"]) == version and status[0]["state"] == "AVAILABLE":
                return time.monotonic() - start
            last = f"stable -> version {status[0]['version']} ({status[0]['state']})"
        except client.ServingError as e:
            last = e.message
        except OSError as e:
            raise VersionError(f"cannot reach {server} ({cli.one_line(getattr(e, 'reason', e))}); "
                               f"is flowers serve running at {server}?") from None
        time.sleep(0.5)
    raise VersionError(f"{server} still answers {last} after {timeout_s:.0f} s: is it polling models.config "
                       "(flowers serve --model_config_file_poll_wait_seconds N)?")


def main(argv=None):
    parser = cli.ArgumentParser(prog="flowers versions", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    for name, help_ in (("list", "versions on disk, their labels, accuracy and (--server) state"),
                        ("set-default", "point the stable label at version N"),
                        ("rollback", "swap stable and previous")):
        p = sub.add_parser(name, help=help_, description=help_)
        if name == "set-default":
            p.add_argument("version", type=int)
        add_config_args(p)
        p.add_argument("--model_base_path", help="where the versions are, as seen from this machine "
                       "(default: the model's base_path in the config)")
        p.add_argument("--server", metavar="URL", help="a model server (http://...): list shows its state "
                       "per version; set-default and rollback wait until it serves the new stable version")
        if name == "list":
            p.add_argument("--format", choices=("table", "json"), default="table")
        else:
            p.add_argument("--wait_seconds", type=float, default=120, help="how long to wait for --server")
    args = parser.parse_args(argv)
    if args.server and not args.server.startswith(("http://", "https://")):
        parser.error(f"--server {args.server}: give a URL with its scheme, e.g. http://{args.server}")
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
        if args.server:
            waited = wait_for_server(args.server, args.model_name, version, args.wait_seconds)
            print(f"{args.server}: stable -> version {version} (AVAILABLE after {waited:.1f} s)")
        return 0
    except (VersionError, StoreError, KeyError) as e:
        print(f"flowers versions: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
