"""Classify, Regress and MultiInference over tf.Examples, after TF Serving's classifier.cc,
regressor.cc, multi_inference.cc and util.cc (InputToSerializedExampleTensor).

The signature gets one DT_STRING input of serialized tf.Examples; with a context, each
example is serialized after the context (proto concatenation = merge, the example wins),
as TF Serving does. Results come back as its ClassificationResult / RegressionResult.
"""
import numpy as np
from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

from flowers.serving.errors import invalid

CLASSIFY, REGRESS, PREDICT = ("tensorflow/serving/classify", "tensorflow/serving/regress",
                              "tensorflow/serving/predict")
CLASSES, SCORES, OUTPUTS = "classes", "scores", "outputs"


def serialized_examples(input_proto):
    """tensorflow.serving.Input -> 1-D object array of serialized tf.Examples."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples, context = input_proto.example_list.examples, b""
    elif kind == "example_list_with_context":
        examples = input_proto.example_list_with_context.examples
        context = input_proto.example_list_with_context.context.SerializeToString()
    else:
        raise invalid("Input is empty.")
    if not examples:
        raise invalid("Input is empty.")
    out = np.empty(len(examples), dtype=object)
    out[:] = [context + e.SerializeToString() for e in examples]
    return out


def _check_signature(signature, method):
    kind = "classification" if method == CLASSIFY else "regression"
    if signature.method_name != method:
        raise invalid(f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if method == CLASSIFY:
        if len(signature.outputs) not in (1, 2):
            raise invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
        if not set(signature.outputs) & {CLASSES, SCORES}:
            raise invalid(f"Expected classification signature outputs to contain {CLASSES} or {SCORES}.")
    elif len(signature.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    elif OUTPUTS not in signature.outputs:
        raise invalid(f"No {OUTPUTS} output tensor found in regression signature.")
    return next(iter(signature.inputs))


async def run(manager, servable, signature, method, input_proto):
    """Run a classify or regress signature; -> ClassificationResult or RegressionResult."""
    name = _check_signature(signature, method)
    examples = serialized_examples(input_proto)
    outputs = await manager.predict(servable, signature, {name: examples})
    if method == CLASSIFY:
        return classification_result(outputs, len(examples))
    return regression_result(outputs, len(examples))


def _shape(arr):
    return "[" + ",".join(map(str, np.shape(arr))) + "]"


def classification_result(outputs, batch):
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for name, arr in ((CLASSES, classes), (SCORES, scores)):
        if arr is None:
            continue
        if np.ndim(arr) != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(arr)}")
        if len(arr) != batch:
            raise invalid(f"Expected {name} output batch size of {batch}. Got {len(arr)}")
    if scores is not None and scores.dtype != np.float32:
        raise invalid(f"Expected scores Tensor of DT_FLOAT. Got: {scores.dtype}")
    if classes is not None and classes.dtype != object:
        raise invalid(f"Expected classes Tensor of DT_STRING. Got: {classes.dtype}")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise invalid(f"Tensors class and score should match in shape. "
                      f"Class shape: {_shape(classes)} Score shape: {_shape(scores)}")
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for i in range(batch):
        row = result.classifications.add()
        for j in range(width):
            entry = row.classes.add()
            if classes is not None:
                entry.label = classes[i][j].decode("utf-8", errors="replace")
            if scores is not None:
                entry.score = scores[i][j]
    return result


def regression_result(outputs, batch):
    values = outputs[OUTPUTS]
    if values.dtype != np.float32:
        raise invalid(f"Expected output Tensor of DT_FLOAT. Got: {values.dtype}")
    if not (np.ndim(values) == 1 or (np.ndim(values) == 2 and values.shape[1] == 1)) or len(values) != batch:
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                      f"but got {_shape(values)}")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add(value=value)
    return result


async def multi_inference(manager, request):
    """MultiInferenceRequest -> MultiInferenceResponse: several classify/regress signatures of
    one model version over the same examples."""
    if not request.tasks:
        raise invalid("Tasks is empty.")
    first = request.tasks[0].model_spec
    seen = set()
    for task in request.tasks:
        if task.model_spec.name != first.name:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        if (task.model_spec.version, task.model_spec.version_label) != (first.version, first.version_label):
            raise invalid("ModelSpecs in a MultiInferenceRequest must access the same model version.")
        key = task.model_spec.signature_name
        if key in seen:
            raise invalid(f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        if task.method_name not in (CLASSIFY, REGRESS):
            raise invalid(f"Unsupported signature method_name: {task.method_name}")
    version = first.version.value if first.HasField("version") else None
    servable = manager.resolve(first.name, version, first.version_label or None)
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        signature = servable.signature(task.model_spec.signature_name)
        result = await run(manager, servable, signature, task.method_name, request.input)
        entry = response.results.add()
        entry.model_spec.name = servable.name
        entry.model_spec.version.value = servable.version
        entry.model_spec.signature_name = signature.name
        if task.method_name == CLASSIFY:
            entry.classification_result.CopyFrom(result)
        else:
            entry.regression_result.CopyFrom(result)
    return response
