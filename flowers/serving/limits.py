"""What one request may ask of the local server: instances, and the pixels its images declare
(each under --max_image_pixels, all together under --max_request_pixels), checked from the
headers before anything is decoded."""
import tensorflow as tf

from flowers.core import images
from flowers.core.rejection import Rejection
from flowers.serving.errors import invalid

DEFAULT_MAX_INSTANCES = 256
DEFAULT_MAX_REQUEST_PIXELS = 4 * images.DEFAULT_MAX_PIXELS


def check_work(signature, inputs, size, max_image_pixels, max_request_instances, max_request_pixels):
    """Cap what one request may ask for: instances, then the pixels its images declare
    (each image under --max_image_pixels, all of them under --max_request_pixels)."""
    if max_request_instances and size > max_request_instances:
        raise invalid(f"Request has {size} instances, more than the limit of {max_request_instances}")
    total = 0
    for name, arr in inputs.items():
        if signature.inputs[name].dtype != tf.string or not name.endswith("_bytes"):
            continue
        for value in arr.ravel():
            try:
                _fmt, width, height = images.probe(value, max_image_pixels)
            except Rejection as e:
                if e.reason == "too_large":  # the model itself rejects non-images
                    raise invalid(f"Input {name}: {e}") from None
                continue
            total += width * height
            if max_request_pixels and total > max_request_pixels:
                raise invalid(f"Input {name}: the request's images hold more than the limit of "
                              f"{max_request_pixels} pixels in all")
