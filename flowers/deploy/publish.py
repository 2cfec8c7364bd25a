"""`flowers deploy`: copy an exported model to a TF Serving base path as the next version and
point a label at it, what `gcloud ml-engine versions create` (+ `set-default`) did in the lab.

    flowers deploy --model_dir OUT/model/3 --model_base_path gs://BUCKET/models/flowers \\
        [--label stable|canary] [--model_config_file PATH | --configmap flowers-models]

The version is written under a temporary name, then renamed, so a server that polls the base
path never sees a half-written version; only then does models.config change (see
flowers.versions for the labels and the version policy). The config defaults to
`models.config` beside the base path's folder (BASE/../models.config); the model is added to it
if it is not there yet, with BASE as its base_path (a local BASE made absolute, so a server
started from any folder finds it). A model already in the config keeps its
base_path: that is the path as the *server* sees it (e.g. /models/flowers in a pod), which may
differ from the path deploy copies to.
"""
import sys
import uuid

from flowers import cli
from flowers.core import base_path, defaults, storage
from flowers.deploy import stores, versions


def version_dir(model_dir):
    """A SavedModel version folder: model_dir itself, or its highest numbered sub-folder."""
    try:
        return base_path.version_dir(model_dir)
    except ValueError as e:
        raise versions.VersionError(str(e)) from None


def copy_version(src, model_base_path):
    """Copy src to model_base_path/<next version>/ and return the version."""
    version = base_path.next_version(model_base_path)
    final = storage.join(model_base_path, str(version))
    # TF Serving only looks at all-digit folder names, so the staging name is invisible to it.
    staging = storage.join(model_base_path, f".incoming-{version}-{uuid.uuid4().hex[:8]}")
    storage.copy_tree(src, staging)
    if storage.exists(final):  # another deploy took this number meanwhile
        storage.gfile.rmtree(staging)
        raise versions.VersionError(f"{final} appeared while copying; deploy again")
    storage.gfile.rename(staging, final)
    return version


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
