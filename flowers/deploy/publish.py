"""`flowers deploy`: copy an exported model to a TF Serving base path as the next version and
point a label at it, what `gcloud ml-engine versions create` (+ `set-default`) did in the lab.

    flowers deploy --model_dir OUT/model/3 --model_base_path gs://BUCKET/models/flowers \\
        [--label stable|canary] [--model_config_file PATH | --configmap flowers-models]

The version is written under a temporary name, then renamed, so a server that polls the base
path never sees a half-written version; only then does models.config change (see
flowers.deploy.versions for the labels and the version policy). The config defaults to
`models.config` beside the base path's folder (BASE/../models.config); the model is added to it
if it is not there yet, with BASE as its base_path (a local BASE made absolute, so a server
started from any folder finds it). A model already in the config keeps its
base_path: that is the path as the *server* sees it (e.g. /models/flowers in a pod), which may
differ from the path deploy copies to.
"""
import logging
import re
import sys
import time
import uuid

from flowers import cli
from flowers.core import base_path, defaults, storage
from flowers.deploy import stores, versions

log = logging.getLogger(__name__)
# A staging folder older than this was left by a killed deploy (copies take minutes).
STALE_AFTER_S = 3600
_STAGING = re.compile(r"\.incoming-(\d+)-(\d+)-[0-9a-f]+$")


def version_dir(model_dir):
    """A SavedModel version folder: model_dir itself, or its highest numbered sub-folder."""
    try:
        return base_path.version_dir(model_dir)
    except ValueError as e:
        raise versions.VersionError(str(e)) from None


def remove_stale_staging(model_base_path, now=None):
    """Delete `.incoming-*` folders that killed deploys left (full-size copies); returns their names.
    Their names carry their start time, so a deploy copying right now is left alone."""
    if not storage.isdir(model_base_path):
        return []
    now, removed = now or time.time(), []
    for name in storage.listdir(model_base_path):
        if not name.startswith(".incoming-"):
            continue
        m = _STAGING.fullmatch(name)
        if m and now - int(m[2]) < STALE_AFTER_S:
            continue
        log.info("removing %s, left by an interrupted deploy", name)
        storage.gfile.rmtree(storage.join(model_base_path, name))
        removed.append(name)
    return removed


def copy_version(src, model_base_path):
    """Copy src to model_base_path/<next version>/ and return the version."""
    remove_stale_staging(model_base_path)
    version = base_path.next_version(model_base_path)
    # TF Serving only looks at all-digit folder names, so the staging name is invisible to it.
    staging = storage.join(model_base_path, f".incoming-{version}-{int(time.time())}-{uuid.uuid4().hex[:8]}")
    storage.copy_tree(src, staging)
    for _ in range(10):  # another deploy may take the number meanwhile: take the next one
        version = base_path.next_version(model_base_path)
        final = storage.join(model_base_path, str(version))
        try:
            storage.gfile.rename(staging, final)
            return version
        except (OSError, storage.tf.errors.OpError):
            if not storage.exists(final):
                raise
    storage.gfile.rmtree(staging)
    raise versions.VersionError(f"could not claim a version number under {model_base_path}; deploy again")


def default_config_path(model_base_path):
    return storage.join(storage.dirname(str(model_base_path).rstrip("/")), "models.config")


def deploy(model_dir, model_base_path, model_name=defaults.MODEL_NAME, label=defaults.STABLE, config_path=None):
    """Copy the export as the next version, point `label` at it in models.config; returns the version."""
    src = version_dir(model_dir)
    store = stores.open_store(config_path or default_config_path(model_base_path))
    store.read()  # fail on an unreachable config before copying anything
    version = copy_version(src, model_base_path)
    versions.update(store, model_name, lambda model: versions.set_label(model, label, version),
                    base_path=storage.absolute(model_base_path))
    return version


def main(argv=None):
    parser = cli.ArgumentParser(prog="flowers deploy", description=__doc__)
    parser.add_argument("--model_dir", required=True,
                        help="an exported version folder (OUT/model/3) or its parent (OUT/model: highest version)")
    parser.add_argument("--model_base_path", required=True, help="TF Serving base path, local or gs://")
    parser.add_argument("--label", default=versions.STABLE,
                        help="label to point at the new version: stable (the default version) or canary")
    versions.add_config_args(parser)
    args = parser.parse_args(argv)
    try:
        location = versions.config_location(args, default=default_config_path(args.model_base_path))
        version = deploy(args.model_dir, args.model_base_path, args.model_name, args.label, location)
    except (versions.VersionError, stores.StoreError) as e:
        print(f"flowers deploy: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.model_name}: deployed version {version} to {args.model_base_path}, "
          f"{args.label} -> {version} ({location})")
    print(f"next: flowers versions list --model_config_file {location} [--server http://localhost:8501]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
