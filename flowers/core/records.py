"""The tf.train.Example schema shared by preprocessing (writer) and training (reader)."""
import json
import re

import tensorflow as tf

from flowers.core import storage

RECORD_SUFFIX = ".tfrecord.gz"


def make_example(image_uri, embedding, label_ids):
    return tf.train.Example(features=tf.train.Features(feature={
        "image_uri": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_uri.encode()])),
        "embedding": tf.train.Feature(float_list=tf.train.FloatList(value=list(map(float, embedding)))),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=list(label_ids))),
    }))


def feature_spec(embedding_size):
    return {
        "image_uri": tf.io.FixedLenFeature([], tf.string),
        "embedding": tf.io.FixedLenFeature([embedding_size], tf.float32),
        "label": tf.io.VarLenFeature(tf.int64),
    }


def parse(serialized, embedding_size):
    """Batch of serialized Examples -> dict of tensors ('label' stays sparse: rows may carry several)."""
    return tf.io.parse_example(serialized, feature_spec(embedding_size))


def metadata_path(prefix):
    return f"{prefix}.metadata.json"


def read_metadata(prefix):
    return json.loads(storage.read_text(metadata_path(prefix)))


def write_metadata(prefix, metadata):
    storage.write_text(metadata_path(prefix), json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def shard_pattern(prefix):
    """The files a preprocess run writes for PREFIX: PREFIX-00000-of-00004.tfrecord.gz, ..."""
    return f"{prefix}-*{RECORD_SUFFIX}"


def prefix_of(pattern):
    """PREFIX from a shard file or glob (PREFIX-*.tfrecord.gz, PREFIX-00001-of-00004.tfrecord.gz, PREFIX*)."""
    stem = pattern[: -len(RECORD_SUFFIX)] if pattern.endswith(RECORD_SUFFIX) else pattern
    return re.sub(r"(-\d+-of-\d+|-?\*)$", "", stem)
