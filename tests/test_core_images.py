"""The shared image function: every format and colour mode, and bad bytes."""
import io

import numpy as np
import pytest
from PIL import Image

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
