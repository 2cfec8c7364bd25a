"""TF Serving's REST predict JSON <-> numpy arrays, after tensorflow_serving/util/json_tensor.cc.

Requests are row (`"instances": [...]`) or columnar (`"inputs": ...`); binary strings
are `{"b64": "..."}`. Responses are `"predictions"` (row) or `"outputs"` (columnar);
string outputs whose name ends in `_bytes` go back as `{"b64": ...}`. Error messages
follow TF Serving's wording so clients see the same text from either server.
"""
import binascii
import json
import sys
import threading

import numpy as np
import pybase64  # base64 with SIMD: 0.17 of 0.8 ms per request the server adds to the model
import tensorflow as tf

from flowers.serving.errors import Code, ServingError, invalid

ROW, COLUMNAR = "row", "columnar"
DEEP_JSON_LIMIT, DEEP_JSON_STACK = 100_000, 512 << 20  # nesting depth, bytes of stack for it
_DEEP_LOCK = threading.Lock()
_TYPE_NAMES = {tf.float32: "float", tf.float64: "double", tf.string: "string", tf.bool: "bool"}


def _dtype_name(dtype):
    return _TYPE_NAMES.get(dtype, dtype.name)


def _json_type(value):
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def short(value, limit=200):
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse(body):
    """Request body -> JSON object (dict) with an optional string 'signature_name'."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        try:
            doc = json.loads(body)
        except RecursionError:  # deep nesting (maybe under a key nobody reads): TF Serving parses it
            doc = _loads_deep(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise invalid(f"JSON Parse error: {e}") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {short(doc)} Is not object")
    if not isinstance(doc.get("signature_name", ""), str):
        raise invalid("'signature_name' key must be a string value.")
    return doc


def _loads_deep(body):
    """json.loads on a thread with a large stack and recursion limit (rapidjson has no such limit)."""
    result = {}

    def target():
        try:
            result["doc"] = json.loads(body)
        except (ValueError, RecursionError) as e:
            result["error"] = e

    if sys.getrecursionlimit() < DEEP_JSON_LIMIT:
        sys.setrecursionlimit(DEEP_JSON_LIMIT)  # only ever raised, never lowered: other threads may rely on it
    with _DEEP_LOCK:
        previous = threading.stack_size(DEEP_JSON_STACK)
        try:
            thread = threading.Thread(target=target, name="deep-json")
            thread.start()
        finally:
            threading.stack_size(previous)
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["doc"]


def is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value):
    if not is_b64(value):
        raise invalid(f"JSON Value: {short(value)} not formatted correctly for base64 data")
    text = value["b64"].strip()
    try:
        return pybase64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _scalar(value, dtype):
    """One JSON leaf -> a Python value of the tensor's type, or TF Serving's type error."""
    def type_error():
        return invalid(f"JSON Value: {short(value)} Type: {_json_type(value)} "
                       f"is not of expected type: {_dtype_name(dtype)}")

    if dtype == tf.string:
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate such as "\ud800": valid JSON, not text
                raise invalid(f"JSON Value: {short(value)} is not valid UTF-8 text") from None
        if isinstance(value, dict):
            return decode_b64(value)
        raise type_error()
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise type_error()
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error()
    if dtype.is_floating:  # beyond the type's range: ±Infinity, as TF Serving's static_cast
        return value if abs(value) <= dtype.max or not np.isfinite(value) else (np.inf if value > 0 else -np.inf)
    if dtype.is_integer:
        if not isinstance(value, int) or not dtype.min <= value <= dtype.max:
            raise type_error()
        return value
    raise ServingError(Code.UNIMPLEMENTED, f"Conversion of JSON Value: {short(value)} to type: {dtype.name}")


def _shape(value):
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level, shape, dtype, out):
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid(f"JSON Value: {short(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                          f"Expected at level: {len(shape)}")
        out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                      f"expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _values(value, dtype):
    """A (nested) JSON value -> (flat Python values, shape)."""
    shape, flat = _shape(value), []
    try:
        _fill(value, 0, shape, dtype, flat)
    except RecursionError:
        raise invalid("JSON value is nested too deeply") from None
    return flat, shape


def _array(flat, shape, dtype):
    if dtype == tf.string:
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    return np.asarray(flat, dtype=dtype.as_numpy_dtype).reshape(shape)


def _from_instances(instances, specs):
    if not isinstance(instances, list):
        raise invalid("Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid("No values in 'instances' array")
    if not isinstance(instances[0], dict) and len(specs) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                      "required as per tensorinfo_map")

    def is_object(v):
        return isinstance(v, dict) and not is_b64(v)

    objects, names = is_object(instances[0]), sorted(specs)
    columns = {}  # name -> (flat values, item shape)

    def add(name, item):
        flat, shape = _values(item, specs[name].dtype)
        if name not in columns:
            columns[name] = (flat, shape)
            return
        values, first = columns[name]
        if len(flat) != int(np.prod(first)):
            raise invalid(f"Expecting tensor size: {int(np.prod(first))} but got: {len(flat)}")
        if shape != first:
            raise invalid(f"Expecting shape [{','.join(map(str, first))}] but got: [{','.join(map(str, shape))}]")
        values.extend(flat)

    for i, elem in enumerate(instances):
        try:
            if objects:
                if not is_object(elem):
                    raise invalid(f"Expecting object but got list at item {i} of input list")
                for name, item in elem.items():
                    if name not in specs:
                        raise invalid(f"JSON object: does not have named input: {name}")
                    add(name, item)
                if sorted(elem) != names:
                    raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: "
                                  f"{short(elem)} keys must be equal to: {','.join(names)}")
            else:
                if is_object(elem):
                    raise invalid(f"Expecting value/list but got object at item {i} of input list")
                add(names[0], elem)
        except ServingError as e:
            if e.message.startswith(("Failed to process", "Expecting object", "Expecting value")):
                raise
            raise invalid(f"Failed to process element: {i} of 'instances' list. Error: {e.message}") from None
    n = len(instances)
    return {name: _array(flat, [n, *shape], specs[name].dtype) for name, (flat, shape) in columns.items()}


def _from_inputs(inputs, specs):
    if not isinstance(inputs, dict) or is_b64(inputs):
        if len(specs) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                          "required as per tensorinfo_map")
        (name, spec), = specs.items()
        return {name: _array(*_values(inputs, spec.dtype), spec.dtype)}
    arrays = {}
    for name, spec in sorted(specs.items()):
        if name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _array(*_values(inputs[name], spec.dtype), spec.dtype)
    return arrays


def to_arrays(doc, specs):
    """Parsed request + the signature's {input name: TensorSpec} -> ({name: ndarray}, format)."""
    if not specs:
        raise invalid("Failed to get input map for signature")
    if "instances" in doc and "inputs" in doc:
        raise invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in doc:
        return _from_instances(doc["instances"], specs), ROW
    if "inputs" in doc:
        return _from_inputs(doc["inputs"], specs), COLUMNAR
    raise invalid("Missing 'inputs' or 'instances' key")


def float32_json(value):
    """A float32 as JSON writes it shortest: 0.2, not 0.20000000298023224."""
    return float(str(value))


def _to_list(arr, name):
    """ndarray -> nested JSON values: float32 in its shortest form, `*_bytes` strings as b64."""
    arr = np.asarray(arr)
    if arr.dtype == object or arr.dtype.kind == "S":
        if name.endswith("_bytes"):
            flat = [{"b64": pybase64.b64encode(v).decode("ascii")} for v in arr.ravel()]
        else:
            flat = [v.decode("utf-8", errors="replace") for v in arr.ravel()]
    elif arr.dtype.kind == "f" and arr.dtype != np.float64:
        flat = [float32_json(v) for v in arr.ravel()]
    else:
        flat = arr.ravel().tolist()
    if not arr.shape:
        return flat[0]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(arr.shape).tolist()


def to_json(outputs, fmt):
    """{name: ndarray} -> the response object for the request's format."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            return {"outputs": _to_list(outputs[names[0]], names[0])}
        return {"outputs": {name: _to_list(outputs[name], name) for name in names}}
    batch = None
    for name in names:
        shape = np.shape(outputs[name])
        if not shape:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch is not None and shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}")
        batch = shape[0]
    columns = {name: _to_list(outputs[name], name) for name in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{name: columns[name][i] for name in names} for i in range(batch)]}
