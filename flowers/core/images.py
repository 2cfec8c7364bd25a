"""The one image function: encoded bytes -> backbone input. Preprocessing and
the exported model both call `decode_and_resize`, so training and serving see
identical pixels (no train/serve skew).
"""
import io
import os
import stat

import tensorflow as tf
from PIL import Image

from flowers.core import storage
from flowers.core.rejection import Rejection

# Decompression-bomb guard: images over this many pixels are rejected unread.
DEFAULT_MAX_PIXELS = 50_000_000


def decode_and_resize(image_bytes, image_size):
    """Scalar string tensor (JPEG, PNG, GIF, BMP) -> float32 [size, size, 3] in [0, 255].

    Grayscale is repeated to RGB; alpha is composited over white; CMYK JPEGs are
    converted by the decoder; animated GIFs use their first frame.
    """
    img = tf.io.decode_image(image_bytes, channels=0, expand_animations=False)
    img = tf.image.convert_image_dtype(img, tf.float32)  # [0, 1], any bit depth
    channels = tf.shape(img)[-1]
    has_alpha = tf.cast(channels % 2 == 0, tf.int32)  # LA or RGBA
    color = img[..., : channels - has_alpha]
    color = tf.tile(color, [1, 1, 3 // tf.shape(color)[-1]])  # gray -> RGB
    alpha = tf.cond(has_alpha > 0, lambda: img[..., -1:], lambda: tf.ones_like(img[..., :1]))
    img = tf.ensure_shape(color * alpha + (1.0 - alpha), [None, None, 3])
    img = tf.image.resize(img, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(img, 0.0, 1.0) * 255.0


def decode_batch(image_bytes, image_size):
    """String tensor [N] -> float32 [N, size, size, 3]; images may differ in size and format."""
    return tf.map_fn(
        lambda b: decode_and_resize(b, image_size),
        tf.convert_to_tensor(image_bytes, tf.string),
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )


def read_image(uri, max_pixels=DEFAULT_MAX_PIXELS):
    """The bytes of the image a row names, probed: (bytes, (format, width, height)), or Rejection.

    A local path that is not a regular file (a directory, FIFO, device) is refused without
    opening it: reading a FIFO would block forever."""
    if not storage.is_remote(uri):
        try:
            mode = os.stat(uri).st_mode
        except OSError as e:
            raise Rejection("missing_file", f"cannot read: {e.strerror}") from None
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise Rejection("not_a_file", f"cannot read: {kind}")
    try:
        content = storage.read_bytes(uri)
    except Exception as e:  # noqa: BLE001 - gs:// not found, permission, ...: all unreadable
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise Rejection("missing_file", f"cannot read: {message}") from None
    return content, probe(content, max_pixels)


def probe(image_bytes, max_pixels=DEFAULT_MAX_PIXELS):
    """Check bytes cheaply before decoding: returns (format, width, height) or raises Rejection."""
    if not image_bytes:
        raise Rejection("empty_file", "zero-byte file")
    try:
        with Image.open(io.BytesIO(image_bytes)) as im:  # reads the header only
            fmt, (width, height) = im.format, im.size
    except Image.DecompressionBombError as e:
        raise Rejection("too_large", str(e)) from e
    except Exception as e:  # PIL raises several types for non-images
        raise Rejection("not_an_image", "not a readable image (no known image header)") from e
    if fmt not in ("JPEG", "PNG", "GIF", "BMP"):
        raise Rejection("unsupported_format", f"unsupported image format {fmt}")
    if width * height > max_pixels:
        raise Rejection("too_large", f"{width}x{height} exceeds the {max_pixels} pixel limit")
    return fmt, width, height


_decode_fns = {}


def load_image(image_bytes, image_size, max_pixels=DEFAULT_MAX_PIXELS, probed=False):
    """Validated eager decode of one image for pipelines: float32 numpy [size, size, 3].

    Raises Rejection (with a reason tag) on anything that cannot be decoded.
    """
    if not probed:
        probe(image_bytes, max_pixels)
    fn = _decode_fns.get(image_size)
    if fn is None:
        fn = _decode_fns[image_size] = tf.function(
            lambda b: decode_and_resize(b, image_size),
            input_signature=[tf.TensorSpec([], tf.string)])
    try:
        return fn(tf.constant(image_bytes)).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise Rejection("corrupt_image", f"cannot decode image: {e.message.splitlines()[0]}") from e
