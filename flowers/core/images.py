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

# Decompression-bomb guard: images whose header declares more pixels are rejected unread
# (a 7000x7000 JPEG is ~600 MB once decoded to float; phone photos are 12-24 Mpx).
DEFAULT_MAX_PIXELS = 25_000_000
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")  # what tf.io.decode_image reads, and so the model


def _header_ints(head, offset, count, width, big_endian=False):
    """`count` unsigned ints of `width` bytes at `offset` of a padded header string, as int64."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(head, offset, count * width), tf.uint8), tf.int64)
    raw = tf.reshape(raw, [count, width])
    weights = tf.constant([256 ** (width - 1 - i if big_endian else i) for i in range(width)], tf.int64)
    return tf.reduce_sum(raw * weights, axis=1)


def header_pixels(image_bytes):
    """Scalar string tensor -> int64 pixel count its header declares, read in-graph without
    decoding (JPEG, PNG, GIF, BMP, WebP); -1 for anything else (the decoder then refuses it)."""
    head = tf.strings.substr(tf.strings.join([image_bytes, b"\0" * 32]), 0, 32)  # padded: substr never runs off

    def starts(magic, at=0):
        return tf.equal(tf.strings.substr(head, at, len(magic)), magic)

    def jpeg():
        shape = tf.io.extract_jpeg_shape(image_bytes, output_type=tf.int64)  # walks to the SOF marker
        return shape[0] * shape[1]

    def png():  # 32-bit sizes: clipped so that their product cannot overflow int64 (and pass the check)
        return tf.reduce_prod(tf.minimum(_header_ints(head, 16, 2, 4, big_endian=True), 2 ** 31))

    def gif():  # the logical screen: the decoder allocates it
        return tf.reduce_prod(_header_ints(head, 6, 2, 2))

    def bmp():  # int32 little-endian; a negative height means top-down rows
        dims = _header_ints(head, 18, 2, 4)
        dims = tf.where(dims >= 2 ** 31, 2 ** 32 - dims, dims)
        return tf.reduce_prod(dims)

    def webp():
        def vp8():  # lossy: 14-bit sizes after the 3-byte start code
            return tf.reduce_prod(_header_ints(head, 26, 2, 2) % 16384)

        def vp8l():  # lossless: 14 bits each, minus one, packed after the 0x2f signature
            bits = _header_ints(head, 21, 1, 4)[0]
            return (bits % 16384 + 1) * (bits // 16384 % 16384 + 1)

        def vp8x():  # extended: 24-bit canvas sizes, minus one
            return tf.reduce_prod(_header_ints(head, 24, 2, 3) + 1)

        return tf.case([(starts(b"VP8 ", 12), vp8), (starts(b"VP8L", 12), vp8l), (starts(b"VP8X", 12), vp8x)],
                       default=lambda: tf.constant(-1, tf.int64))

    return tf.case([(starts(b"\xff\xd8\xff"), jpeg), (starts(b"\x89PNG\r\n\x1a\n"), png),
                    (starts(b"GIF8"), gif), (starts(b"BM"), bmp),
                    (tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8)), webp)],
                   default=lambda: tf.constant(-1, tf.int64))


def check_pixels(image_bytes, max_pixels):
    """An op that fails (InvalidArgumentError) if the header declares more than max_pixels."""
    pixels = header_pixels(image_bytes)
    return tf.debugging.assert_less_equal(
        pixels, tf.constant(max_pixels, tf.int64),
        message=f"image too large: its header declares more than the {max_pixels} pixel limit")


def decode_and_resize(image_bytes, image_size, max_pixels=DEFAULT_MAX_PIXELS):
    """Scalar string tensor (JPEG, PNG, GIF, BMP, WebP) -> float32 [size, size, 3] in [0, 255].

    The header's size is checked first (max_pixels; 0: no check), so the exported model
    itself refuses decompression bombs. Grayscale is repeated to RGB; alpha is composited
    over white; CMYK JPEGs are converted by the decoder; animated GIFs use their first frame.
    """
    checks = [check_pixels(image_bytes, max_pixels)] if max_pixels else []
    with tf.control_dependencies(checks):
        img = tf.io.decode_image(image_bytes, channels=0, expand_animations=False)
    img = tf.image.convert_image_dtype(img, tf.float32)  # [0, 1], any bit depth
    channels = tf.shape(img)[-1]

    def to_rgb():
        has_alpha = tf.cast(channels % 2 == 0, tf.int32)  # LA or RGBA
        color = img[..., : channels - has_alpha]
        color = tf.tile(color, [1, 1, 3 // tf.shape(color)[-1]])  # gray -> RGB
        alpha = tf.cond(has_alpha > 0, lambda: img[..., -1:], lambda: tf.ones_like(img[..., :1]))
        return color * alpha + (1.0 - alpha)

    # RGB (nearly every photo) skips the three full-size passes of to_rgb, whose result
    # would be the same pixels: 0.8 of 3.8 ms per photo.
    img = tf.cond(tf.equal(channels, 3), lambda: img, to_rgb)
    img = tf.ensure_shape(img, [None, None, 3])
    img = tf.image.resize(img, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(img, 0.0, 1.0) * 255.0


def decode_batch(image_bytes, image_size, max_pixels=DEFAULT_MAX_PIXELS):
    """String tensor [N] -> float32 [N, size, size, 3]; images may differ in size and format."""
    return tf.map_fn(
        lambda b: decode_and_resize(b, image_size, max_pixels),
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
    # Size before format: whatever the format, nothing this large is decoded.
    if max_pixels and width * height > max_pixels:
        raise Rejection("too_large", f"{width}x{height} exceeds the {max_pixels} pixel limit")
    if fmt not in FORMATS:
        raise Rejection("unsupported_format", f"unsupported image format {fmt}")
    return fmt, width, height


_decode_fns = {}


def load_image(image_bytes, image_size, max_pixels=DEFAULT_MAX_PIXELS, probed=False):
    """Validated eager decode of one image for pipelines: float32 numpy [size, size, 3].

    Raises Rejection (with a reason tag) on anything that cannot be decoded.
    """
    return load_image_tensor(image_bytes, image_size, max_pixels, probed).numpy()


def load_image_tensor(image_bytes, image_size, max_pixels=DEFAULT_MAX_PIXELS, probed=False):
    """load_image as an eager tf.Tensor: batched with tf.stack, which copies without holding
    the GIL (np.stack and the conversion back to a tensor held it for 2 copies of 19 MB a batch)."""
    if not probed:
        probe(image_bytes, max_pixels)
    fn = _decode_fns.get((image_size, max_pixels))
    if fn is None:
        fn = _decode_fns[image_size, max_pixels] = tf.function(
            lambda b: decode_and_resize(b, image_size, max_pixels),
            input_signature=[tf.TensorSpec([], tf.string)])
    try:
        return fn(tf.constant(image_bytes))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        if "image too large" in e.message:
            raise Rejection("too_large", e.message.splitlines()[0]) from e
        raise Rejection("corrupt_image", f"cannot decode image: {e.message.splitlines()[0]}") from e
