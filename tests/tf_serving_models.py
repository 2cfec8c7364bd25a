"""Small SavedModels after TF Serving's own test models (tensorflow_serving/servables/tensorflow/
testdata/saved_model_half_plus_two.py), written by the contract tests:

  half_plus_two      TF1 graph: ParseExample over tf.Examples, ref variables a=0.5, b=2, c=3;
                     y = a*x + b, y2 = a*x + c (x: [None, 1]); signatures serving_default
                     (predict x -> y), classify_x_to_y (scores), regress_x_to_y, regress_x_to_y2,
                     and a warmup file that replays a predict and a classify request.
  half_plus_two_tf2  tf.function SavedModel: serving_default (x: float [None, 1] -> y) and
                     `scalar` (x: float [] -> y), for shapes and scalar columnar inputs.
  bad_warmup         half_plus_two whose warmup file names a signature it lacks (fails to load).

To run the contract suite against a real TF Serving, write them and serve the config (with
--enable_model_warmup) beside the flowers model, e.g. in the same server:
    python -m tests.tf_serving_models OUT_DIR    # writes OUT_DIR/<model>/1/ and OUT_DIR/models.config
"""
import os
import sys

import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2

from flowers.core import model_config
from flowers.serving import warmup
from flowers.serving.inference import CLASSIFY, PREDICT, REGRESS

TF1, TF2, BAD_WARMUP = "half_plus_two", "half_plus_two_tf2", "bad_warmup"


def _info(tensor):
    return tf.compat.v1.saved_model.utils.build_tensor_info(tensor)


def _signature(inputs, outputs, method):
    return tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {k: _info(v) for k, v in inputs.items()}, {k: _info(v) for k, v in outputs.items()}, method)


def _warmup_logs(signature="serving_default"):
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0]], dtype=tf.float32))
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    return [prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)),
            prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=classify))]


def write_tf1(path, warmup_signature="serving_default"):
    """TF Serving's half_plus_two, built the TF1 way (graph, session, ref variables)."""
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        parsed = tf.io.parse_example(serialized, {
            "x": tf.io.FixedLenFeature([1], tf.float32),
            "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])})
        x = tf.identity(parsed["x"], name="x")
        a = tf.compat.v1.Variable(0.5, name="a", use_resource=False)
        b = tf.compat.v1.Variable(2.0, name="b", use_resource=False)
        c = tf.compat.v1.Variable(3.0, name="c", use_resource=False)
        y = tf.add(tf.multiply(a, x), b, name="y")
        y2 = tf.add(tf.multiply(a, x), c, name="y2")
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "serving_default": _signature({"x": x}, {"y": y}, PREDICT),
            "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, CLASSIFY),
            "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, REGRESS),
            "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, REGRESS),
        })
        builder.save()
    warmup.write(path, _warmup_logs(warmup_signature))
    return path


class _HalfPlusTwo(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def predict(self, x):
        return {"y": x * 0.5 + 2.0}

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="x")])
    def scalar(self, x):
        return {"y": x * 0.5 + 2.0}


def write_tf2(path):
    module = _HalfPlusTwo()
    tf.saved_model.save(module, path, signatures={"serving_default": module.predict, "scalar": module.scalar})
    return path


def write_all(folder, bad_warmup=False):
    """Every model as folder/<name>/1/, and folder/models.config serving them; -> config path.
    bad_warmup: add BAD_WARMUP (TF Serving refuses to start when a model fails to load at start)."""
    write_tf1(os.path.join(folder, TF1, "1"))
    write_tf2(os.path.join(folder, TF2, "1"))
    names = [TF2]
    if bad_warmup:
        write_tf1(os.path.join(folder, BAD_WARMUP, "1"), warmup_signature="no_such_signature")
        names.append(BAD_WARMUP)
    config = model_config.single_model(TF1, os.path.abspath(os.path.join(folder, TF1)))
    for name in names:
        model = config.model_config_list.config.add(name=name, model_platform="tensorflow")
        model.base_path = os.path.abspath(os.path.join(folder, name))
    path = os.path.join(folder, "models.config")
    model_config.save(path, config)
    return path


if __name__ == "__main__":
    print(write_all(sys.argv[1]))
