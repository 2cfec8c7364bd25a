"""The shared image function: every format and colour mode, and bad bytes."""
import io

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings, strategies as st
from PIL import Image

from flowers import testing
from flowers.core import images
from flowers.core.rejection import Rejection

SIZE = 64


@pytest.fixture(scope="module")
def photo(photos):
    return Image.open(photos["daisy"][0]).convert("RGB")


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [
    ("RGB", "JPEG"), ("CMYK", "JPEG"), ("L", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"),
    ("LA", "PNG"), ("P", "PNG"), ("L", "PNG"), ("RGB", "GIF"), ("RGB", "BMP"), ("RGBA", "BMP"),
])
def test_every_format_and_mode_gives_rgb_close_to_the_photo(photo, mode, fmt):
    expected = images.load_image(encode(photo, "PNG"), SIZE)
    got = images.load_image(encode(photo.convert(mode), fmt), SIZE)
    assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.float32
    assert 0.0 <= got.min() and got.max() <= 255.0
    if mode in ("L", "LA"):  # gray: all channels equal, near the photo's luminance
        np.testing.assert_allclose(got[..., 0], got[..., 2])
        expected = expected.mean(-1, keepdims=True)
    tolerance = 40 if fmt == "GIF" or mode == "P" else 12  # palette quantisation
    assert np.abs(got - expected).mean() < tolerance


def test_alpha_is_composited_over_white():
    img = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent red
    got = images.load_image(encode(img, "PNG"), SIZE)
    np.testing.assert_allclose(got, 255.0, atol=1e-3)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((0, 0, 255), (255, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    got = images.load_image(buf.getvalue(), SIZE)
    assert got[..., 2].mean() > 200 and got[..., 0].mean() < 50


def test_batch_of_mixed_sizes_matches_single_decodes(photos):
    blobs = [open(p, "rb").read() for p in photos["roses"][:3]]
    batch = images.decode_batch(blobs, SIZE).numpy()
    for blob, row in zip(blobs, batch):
        np.testing.assert_allclose(row, images.load_image(blob, SIZE), atol=1e-4)


@pytest.mark.parametrize("blob,reason", [
    (b"", "empty_file"),
    (b"this is a text file, not an image", "not_an_image"),
])
def test_non_images_are_rejected_with_a_reason(blob, reason):
    with pytest.raises(Rejection) as e:
        images.load_image(blob, SIZE)
    assert e.value.reason == reason


def test_truncated_jpeg_is_rejected(photos):
    blob = open(photos["tulips"][0], "rb").read()
    with pytest.raises(Rejection) as e:
        images.load_image(blob[: len(blob) // 2], SIZE)
    assert e.value.reason == "corrupt_image"


def test_pixel_limit_rejects_bombs_before_decoding():
    blob = encode(Image.new("L", (3000, 3000)), "PNG")  # small file, 9 Mpx
    with pytest.raises(Rejection) as e:
        images.load_image(blob, SIZE, max_pixels=1_000_000)
    assert e.value.reason == "too_large"
    assert images.load_image(blob, SIZE, max_pixels=10_000_000).shape == (SIZE, SIZE, 3)


def test_tiny_files_declaring_huge_images_are_too_large(photos):
    """A 25-byte WebP declaring 13000x13000 and a 27 KB JPEG declaring 7000x7000."""
    jpeg = testing.jpeg_declaring(encode(Image.new("RGB", (64, 64)), "JPEG"), 7000, 7000)
    for blob in (testing.webp_declaring(13000, 13000), jpeg):
        with pytest.raises(Rejection) as e:
            images.load_image(blob, SIZE)
        assert e.value.reason == "too_large"


@pytest.mark.parametrize("fmt,kw", [("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {}),
                                    ("WEBP", {"lossless": True})])
def test_in_graph_check_refuses_every_format_over_the_limit_before_decoding(fmt, kw):
    """The exported model runs only the graph: decode_and_resize itself checks the header."""
    blob = encode(Image.new("RGB", (300, 200), (0, 128, 255)), fmt, **kw)
    assert int(images.header_pixels(tf.constant(blob))) == 300 * 200
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
        images.decode_and_resize(tf.constant(blob), SIZE, max_pixels=300 * 200 - 1)
    assert images.decode_and_resize(tf.constant(blob), SIZE, max_pixels=300 * 200).shape == (SIZE, SIZE, 3)


def test_in_graph_check_refuses_header_only_bombs():
    jpeg = testing.jpeg_declaring(encode(Image.new("RGB", (8, 8)), "JPEG"), 7000, 7000)
    for blob in (testing.webp_declaring(13000, 13000), jpeg):
        with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
            images.decode_batch(tf.constant([blob]), SIZE)


def test_webp_is_read_like_the_other_formats(photo):
    """Preprocess and serving accept the same formats: the decoder reads WebP, so probe does too."""
    expected = images.load_image(encode(photo, "PNG"), SIZE)
    got = images.load_image(encode(photo, "WEBP", lossless=True), SIZE)
    assert np.abs(got - expected).mean() < 2


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64), st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM",
                                                b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L",
                                                b"RIFF\x00\x00\x00\x00WEBPVP8X"]))
@example(tail=b"\xff\xd8\xff", magic=b"")  # found by Hypothesis: the JPEG marker in the tail, no prefix
def test_fuzz_probe_and_header_check_never_crash(tail, magic):
    """Any bytes: probe answers a Rejection or a size within the limit; the in-graph header
    reader answers a count (or -1), or the decoder's InvalidArgumentError; nothing else."""
    blob = magic + tail
    try:
        fmt, width, height = images.probe(blob, max_pixels=1_000_000)
        assert fmt in images.FORMATS and width * height <= 1_000_000
    except Rejection as e:
        assert e.reason in ("empty_file", "not_an_image", "unsupported_format", "too_large")
    try:
        pixels = int(_header_pixels(tf.constant(blob)))
        assert pixels >= -1
    except tf.errors.InvalidArgumentError:
        assert blob.startswith(b"\xff\xd8\xff")  # only extract_jpeg_shape (the blob's JPEG branch) may refuse


_header_pixels = tf.function(images.header_pixels, input_signature=[tf.TensorSpec([], tf.string)])
