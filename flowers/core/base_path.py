"""TF Serving's model base path layout: BASE/<integer version>/saved_model.pb(txt).

One definition of "a version folder", shared by export, deploy, versions, the local
server and batch prediction."""
from flowers.core import storage

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def is_saved_model(path):
    return any(storage.exists(storage.join(path, name)) for name in SAVED_MODEL_FILES)


def scan(base_path):
    """Complete version folders (numbered, holding a SavedModel) under a base path: {version: path}."""
    if not storage.isdir(base_path):
        return {}
    found = {}
    for name in storage.listdir(base_path):
        path = storage.join(base_path, name)
        if name.isdigit() and is_saved_model(path):
            found[int(name)] = path
    return found


def next_version(base_path):
    """The next free integer version under a base path (incomplete folders count as taken)."""
    if not storage.exists(base_path):
        return 1
    return max((int(n) for n in storage.listdir(base_path) if n.isdigit()), default=0) + 1


def version_dir(path):
    """A SavedModel folder as given, or the highest complete version under a base path."""
    if is_saved_model(path):
        return path
    found = scan(path)
    if not found:
        raise ValueError(f"{path} is not a SavedModel folder, nor a folder of numbered ones")
    return found[max(found)]


def version_of(version_path):
    """The integer version of a version folder BASE/<version>."""
    return int(str(version_path).rstrip("/").rsplit("/", 1)[-1])
