"""All file access, local paths and gs:// alike: local paths through os/shutil, the rest through
tf.io.gfile, imported only when a remote path (or `storage.gfile`) is used, so light commands
(`flowers versions list`, `flowers data --help`) start without TensorFlow."""
import os
import shutil


def __getattr__(name):  # `storage.gfile`: tf.io.gfile, imported on first use
    if name == "gfile":
        import tensorflow as tf

        return tf.io.gfile
    raise AttributeError(name)


def _gfile():
    return __getattr__("gfile")


def is_remote(path):
    return "://" in str(path)


def join(base, *parts):
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *[str(p).strip("/") for p in parts]])
    return os.path.join(base, *parts)


def dirname(path):
    path = str(path)
    return path.rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(os.path.abspath(path))


def absolute(path):
    """gs://... as given, a local path made absolute."""
    return str(path) if is_remote(path) else os.path.abspath(path)


def resolve(uri, base_dir):
    """A CSV row's uri: gs://... and absolute paths as given, others relative to base_dir."""
    if is_remote(uri) or os.path.isabs(uri):
        return uri
    return join(base_dir, uri)


def read_bytes(path):
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    with _gfile().GFile(path, "rb") as f:
        return f.read()


def read_text(path):
    if not is_remote(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    with _gfile().GFile(path, "r") as f:
        return f.read()


def write_text(path, text):
    makedirs(dirname(path))
    if not is_remote(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    with _gfile().GFile(path, "w") as f:
        f.write(text)


def exists(path):
    return os.path.exists(path) if not is_remote(path) else _gfile().exists(path)


def makedirs(path):
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
    else:
        _gfile().makedirs(path)


def glob(pattern):
    return sorted(_gfile().glob(pattern))  # gfile's glob syntax, the same for local and gs://


def listdir(path):
    if not is_remote(path):
        return sorted(os.listdir(path))
    return sorted(p.rstrip("/") for p in _gfile().listdir(path))


def isdir(path):
    return os.path.isdir(path) if not is_remote(path) else _gfile().isdir(path)


def copy_tree(src, dst):
    """Copy a folder tree (e.g. a SavedModel) between any two supported locations."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return
    gfile = _gfile()
    for dirpath, _dirs, files in gfile.walk(src):
        rel = os.path.relpath(dirpath, src) if not is_remote(src) else dirpath[len(str(src)):].strip("/")
        target = join(dst, rel) if rel not in ("", ".") else dst
        makedirs(target)
        for name in files:
            gfile.copy(join(dirpath, name), join(target, name), overwrite=True)
