"""TF Serving's REST classify/regress JSON <-> tf.Examples and results (json_tensor.cc:
FillClassificationRequestFromJson, FillRegressionRequestFromJson, MakeJsonFromClassificationResult).

    {"signature_name": "...", "context": {"f": 1}, "examples": [{"x": 2.0, "s": "a", "b": {"b64": "..."}}]}
A feature is a value or a list of values: integers -> int64_list, numbers -> float_list,
strings and {"b64": ...} -> bytes_list. Answers are {"results": [[[label, score], ...], ...]}
(classify) or {"results": [value, ...]} (regress).
"""
import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2

from flowers.serving import json_tensor
from flowers.serving.errors import invalid


def _feature(name, value):
    values = value if isinstance(value, list) else [value]
    feature = feature_pb2.Feature()
    if not values:
        feature.float_list.SetInParent()
        return feature
    if all(isinstance(v, str) or json_tensor.is_b64(v) for v in values):
        feature.bytes_list.value.extend(v.encode("utf-8") if isinstance(v, str) else json_tensor.decode_b64(v)
                                        for v in values)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if not all(-2**63 <= v < 2**63 for v in values):
            raise invalid(f"Only int64 is supported for integer feature values: {name}")
        feature.int64_list.value.extend(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        feature.float_list.value.extend(values)
    else:
        raise invalid(f"Feature: {name} has element(s) with unsupported or mixed JSON types: "
                      f"{json_tensor.short(value)}")
    return feature


def _example(obj, what):
    if not isinstance(obj, dict):
        raise invalid(f"{what} must be a JSON object: {json_tensor.short(obj)}")
    example = example_pb2.Example()
    for name, value in obj.items():
        example.features.feature[name].CopyFrom(_feature(name, value))
    return example


def to_input(doc):
    """Parsed request (json_tensor.parse) -> tensorflow.serving.Input."""
    examples = doc.get("examples")
    if examples is None:
        raise invalid("Missing 'examples' key")
    if not isinstance(examples, list):
        raise invalid("'examples' must be an array")
    if not examples:
        raise invalid("'examples' array must have at least one example")
    result = input_pb2.Input()
    if "context" in doc:
        target = result.example_list_with_context
        target.context.CopyFrom(_example(doc["context"], "'context'"))
    else:
        target = result.example_list
    for example in examples:
        target.examples.add().CopyFrom(_example(example, "An element of 'examples'"))
    return result


def _number(value):
    return json_tensor.float32_json(np.float32(value))


def to_json(result):
    """ClassificationResult or RegressionResult -> TF Serving's REST answer."""
    if isinstance(result, classification_pb2.ClassificationResult):
        return {"results": [[[c.label, _number(c.score)] for c in row.classes] for row in result.classifications]}
    return {"results": [_number(r.value) for r in result.regressions]}
