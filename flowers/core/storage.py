"""All file access, local paths and gs:// alike, through tf.io.gfile."""
import os

import tensorflow as tf

gfile = tf.io.gfile


def is_remote(path):
    return "://" in str(path)


def join(base, *parts):
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *[str(p).strip("/") for p in parts]])
    return os.path.join(base, *parts)


def dirname(path):
    path = str(path)
    return path.rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(os.path.abspath(path))


def resolve(uri, base_dir):
    """A CSV row's uri: gs://... and absolute paths as given, others relative to base_dir."""
    if is_remote(uri) or os.path.isabs(uri):
        return uri
    return join(base_dir, uri)


def read_bytes(path):
    with gfile.GFile(path, "rb") as f:
        return f.read()


def read_text(path):
    with gfile.GFile(path, "r") as f:
        return f.read()


def write_text(path, text):
    makedirs(dirname(path))
    with gfile.GFile(path, "w") as f:
        f.write(text)


def exists(path):
    return gfile.exists(path)


def makedirs(path):
    gfile.makedirs(path)


def glob(pattern):
    return sorted(gfile.glob(pattern))


def listdir(path):
    return sorted(p.rstrip("/") for p in gfile.listdir(path))


def isdir(path):
    return gfile.isdir(path)


def copy_tree(src, dst):
    """Copy a folder tree (e.g. a SavedModel) between any two supported locations."""
    for dirpath, _dirs, files in gfile.walk(src):
        rel = os.path.relpath(dirpath, src) if not is_remote(src) else dirpath[len(str(src)):].strip("/")
        target = join(dst, rel) if rel not in ("", ".") else dst
        makedirs(target)
        for name in files:
            gfile.copy(join(dirpath, name), join(target, name), overwrite=True)
