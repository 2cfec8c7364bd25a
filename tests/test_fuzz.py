"""Property-based fuzzing (hypothesis) of what a client or a file controls: the REST JSON -> tensor
path and the image header probe. Any input gets a result or a ServingError/Rejection, never another
exception. Bounded here; `bench/fuzz.py` runs the same properties longer and reports the figures."""
import base64
import io
import json

import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from flowers.core import images
from flowers.core.rejection import Rejection
from flowers.serving import json_tensor
from flowers.serving.errors import ServingError

SIGNATURES = [  # the served model's, and numeric / multi-dimensional ones
    {"key": tf.TensorSpec([None], tf.string), "image_bytes": tf.TensorSpec([None], tf.string)},
    {"x": tf.TensorSpec([None, 2], tf.float32)},
    {"ids": tf.TensorSpec([None], tf.int64), "flag": tf.TensorSpec([None], tf.bool)},
]
CLIENT_ERRORS = {400, 404, 413, 501}

# Text with lone surrogates, control characters and non-BMP characters.
text = st.text(st.characters(codec=None, categories=None), max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), text,
                    st.builds(lambda b: {"b64": base64.b64encode(b).decode()}, st.binary(max_size=16)),
                    st.builds(lambda s: {"b64": s}, text))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["key", "image_bytes", "x", "ids", "flag",
                                                                  "b64", "other"]) | text, inner, max_size=3)),
    max_leaves=20)
random_requests = st.fixed_dictionaries({}, optional={
    "instances": json_values, "inputs": json_values, "signature_name": json_values})
# Near-valid requests for every signature: right keys, values sometimes of the wrong type or size.
b64 = st.builds(lambda b: {"b64": base64.b64encode(b).decode()}, st.binary(max_size=16))
leaf = st.one_of(text, b64, st.floats(allow_nan=False, width=32), st.integers(-2**63, 2**63), st.booleans(),
                 scalars)
instance = st.fixed_dictionaries({}, optional={"key": leaf, "image_bytes": leaf, "x": st.lists(leaf, max_size=3),
                                               "ids": leaf, "flag": leaf})
near_valid = st.one_of(
    st.builds(lambda rows: {"instances": rows}, st.lists(instance, min_size=1, max_size=4)),
    st.builds(lambda cols: {"inputs": cols}, st.dictionaries(
        st.sampled_from(["key", "image_bytes", "x", "ids", "flag"]), st.lists(leaf, max_size=3), max_size=5)),
    st.builds(lambda rows: {"instances": rows}, st.lists(st.lists(st.floats(width=32), min_size=2, max_size=2),
                                                        min_size=1, max_size=3)))
requests = random_requests | near_valid


def check_json_request(doc, signature):
    """JSON text -> parse -> arrays: arrays of the signature's dtypes with one batch size, or a
    client error; never a 500 (an exception other than ServingError, or a 5xx one)."""
    body = json.dumps(doc).encode("utf-8", errors="surrogatepass")
    try:
        parsed = json_tensor.parse(body)
        arrays, fmt = json_tensor.to_arrays(parsed, signature)
    except ServingError as e:
        assert e.http_status in CLIENT_ERRORS, (e.http_status, e.message)
        assert e.message
        return "rejected"
    assert fmt in (json_tensor.ROW, json_tensor.COLUMNAR)
    for name, arr in arrays.items():
        spec = signature[name]
        if spec.dtype == tf.string:
            assert arr.dtype == object and all(isinstance(v, bytes) for v in arr.ravel())
        else:
            assert arr.dtype == spec.dtype.as_numpy_dtype
    return "accepted"


def check_raw_body(body, signature):
    """Arbitrary bytes as a request body: a client error or arrays, nothing else."""
    try:
        json_tensor.to_arrays(json_tensor.parse(body), signature)
    except ServingError as e:
        assert e.http_status in CLIENT_ERRORS, (e.http_status, e.message)
        return "rejected"
    return "accepted"


def _encoded(fmt, size, mode):
    buf = io.BytesIO()
    Image.new(mode, size, (10, 20, 30) if mode == "RGB" else 7).save(buf, fmt)
    return buf.getvalue()


# Real headers of every format with bytes flipped, cut or appended: the probe's and the in-graph
# check's hardest inputs.
image_blobs = st.builds(
    lambda blob, flips, cut, tail: bytes(
        b ^ flips.get(i, 0) for i, b in enumerate(blob[:max(1, len(blob) - cut)])) + tail,
    st.builds(_encoded, st.sampled_from(["JPEG", "PNG", "GIF", "BMP", "WEBP"]),
              st.tuples(st.integers(1, 40), st.integers(1, 40)), st.sampled_from(["RGB", "L"])),
    st.dictionaries(st.integers(0, 40), st.integers(1, 255), max_size=4),
    st.integers(0, 64), st.binary(max_size=16))

_header_pixels = tf.function(images.header_pixels, input_signature=[tf.TensorSpec([], tf.string)])


def check_image(blob, max_pixels=500):
    """probe: a Rejection with a known reason, or a supported format within the limit; the in-graph
    header reader agrees with it on a size over the limit (both refuse)."""
    try:
        fmt, width, height = images.probe(blob, max_pixels)
        assert fmt in images.FORMATS and width * height <= max_pixels
        outcome = "accepted"
    except Rejection as e:
        assert e.reason in ("empty_file", "not_an_image", "unsupported_format", "too_large"), e.reason
        outcome = e.reason
    try:
        declared = int(_header_pixels(tf.constant(blob)))
    except tf.errors.InvalidArgumentError:  # extract_jpeg_shape on a broken JPEG header
        return outcome
    assert declared >= -1
    # PIL grows a GIF's canvas to fit a frame; TF allocates the logical screen, which the graph reads.
    if outcome == "too_large" and declared > 0 and not blob.startswith(b"GIF"):
        assert declared > max_pixels
    return outcome


FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@FAST
@given(requests, st.sampled_from(SIGNATURES))
def test_fuzz_rest_json_to_tensors(doc, signature):
    check_json_request(doc, signature)


@FAST
@given(st.binary(max_size=200) | st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
       st.sampled_from(SIGNATURES))
def test_fuzz_rest_raw_bodies(body, signature):
    check_raw_body(body, signature)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(image_blobs)
def test_fuzz_image_probe_and_in_graph_header_check(blob):
    check_image(blob)


def test_png_sizes_whose_product_overflows_int64_are_still_too_large():
    """Found by bench/fuzz.py: 0xe8698ee3 x 0xcea2b0f3 wrapped to a negative count, under any limit."""
    blob = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xe8i\x8e\xe3\xce\xa2\xb0\xf3\xdf\x9e"
    assert int(_header_pixels(tf.constant(blob))) > 2 ** 60
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
        images.decode_and_resize(tf.constant(blob), 8)
    assert check_image(blob) != "accepted"


def test_known_crashers_are_client_errors():
    """Found by fuzzing or reported: a lone surrogate in a string value (was a 500)."""
    assert check_json_request({"instances": [{"key": "\ud800", "image_bytes": {"b64": ""}}]}, SIGNATURES[0]) \
        == "rejected"
    assert check_raw_body(b'{"instances": ["\\udfff"]}', {"key": tf.TensorSpec([None], tf.string)}) == "rejected"
