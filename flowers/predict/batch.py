"""`flowers batch-predict`: run the exported model over a CSV of images, in Beam
(the lab's ML Engine batch prediction).

    flowers batch-predict --input_path eval_set.csv --output_path out/predictions \\
        --model_dir models/flowers [--runner DataflowRunner ...]

CSV rows are `uri[,label...]` (labels optional, copied to the output). Writes one
JSON line per image to PREFIX-SSSSS-of-NNNNN.json: {"key", "prediction", "label",
"scores"[, "labels"]}; rows that cannot be read or are not images go to
PREFIX.rejected-SSSSS-of-NNNNN.json with a reason. --model_dir is a SavedModel
folder, or a TF Serving base path (its latest version is used).
"""
import argparse
import json
import logging
import sys

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from flowers.core import base_path, images, storage
from flowers.core.rejection import Rejection
from flowers.data import rows as csv_rows
from flowers.serving import errors

NAMESPACE = "batch_predict"
REJECTED = "rejected"


def parse_known_args(argv):
    parser = argparse.ArgumentParser(prog="flowers batch-predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_path", required=True, help="CSV of uri[,label...] rows")
    parser.add_argument("--output_path", required=True, help="output prefix")
    parser.add_argument("--model_dir", required=True, help="SavedModel folder or TF Serving base path")
    parser.add_argument("--signature_name", default="serving_default")
    parser.add_argument("--batch_size", type=int, default=16, help="largest batch per model call")
    parser.add_argument("--max_pixels", type=int, default=images.DEFAULT_MAX_PIXELS)
    return parser.parse_known_args(argv)


def resolve_model_dir(path):
    """A SavedModel folder as given, or the latest numbered version under a base path."""
    return base_path.version_dir(path)


def parse_line(numbered_line, base_dir):
    """(line number, text) -> (uri, labels); labels are optional here."""
    line_no, line = numbered_line
    try:
        row = csv_rows.parse_row(line_no, line, base_dir, labels_required=False)
    except Rejection as e:
        return _reject("", e.reason, str(e))
    return row.uri, list(row.labels)


def read_image(row, max_pixels):
    """(uri, labels) -> ((uri, labels), bytes), or a rejected record for unreadable / non-images."""
    uri, labels = row
    try:
        content, _ = images.read_image(uri, max_pixels)
    except Rejection as e:
        return _reject(uri, e.reason, str(e))
    return (uri, labels), content


def _reject(uri, reason, error):
    beam.metrics.Metrics.counter(NAMESPACE, f"rejected_{reason}").inc()
    return beam.pvalue.TaggedOutput(REJECTED, {"uri": uri, "reason": reason, "error": error})


class SavedModelHandler(ModelHandler):
    """Loads the SavedModel once per worker; examples are ((uri, labels), image bytes).

    A batch that fails (an image the decoder rejects) is re-run image by image, so only
    the bad image is rejected."""

    def __init__(self, model_dir, signature_name="serving_default", max_batch_size=16):
        super().__init__()
        self.model_dir, self.signature_name, self.max_batch_size = model_dir, signature_name, max_batch_size

    def load_model(self):
        import tensorflow as tf

        loaded = tf.saved_model.load(self.model_dir)
        fn = loaded.signatures[self.signature_name]
        fn._flowers_keepalive = loaded  # the signature needs the loaded object's variables
        return fn

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_size}

    def _call(self, fn, batch):
        import tensorflow as tf

        out = fn(key=tf.constant([uri for (uri, _), _ in batch]), image_bytes=tf.constant([b for _, b in batch]))
        return [{"key": out["key"][i].numpy().decode(), "prediction": int(out["prediction"][i]),
                 "label": out["label"][i].numpy().decode(),
                 "scores": [float(str(s)) for s in out["scores"][i].numpy()]} for i in range(len(batch))]

    def run_inference(self, batch, model, inference_args=None):
        import tensorflow as tf

        try:
            results = self._call(model, batch)
        except tf.errors.OpError:
            results = []
            for example in batch:
                try:
                    results += self._call(model, [example])
                except tf.errors.OpError as e:
                    results.append({"error": errors.from_tf_error(e).message})
        return [PredictionResult(example[0], inference) for example, inference in zip(batch, results)]


def format_result(result):
    """PredictionResult -> an output JSON line, or a rejected record."""
    (uri, labels), inference = result.example, result.inference
    if "error" in inference:
        return _reject(uri, "corrupt_image", inference["error"])
    beam.metrics.Metrics.counter(NAMESPACE, "predicted").inc()
    return json.dumps({**inference, **({"labels": labels} if labels else {})})


def run(argv=None, save_main_session=True, test_pipeline=None):
    known_args, pipeline_args = parse_known_args(argv)
    pipeline_options = PipelineOptions(pipeline_args)
    pipeline_options.view_as(SetupOptions).save_main_session = save_main_session
    model_dir = resolve_model_dir(known_args.model_dir)
    base_dir = storage.dirname(known_args.input_path)
    handler = SavedModelHandler(model_dir, known_args.signature_name, known_args.batch_size)

    pipeline = test_pipeline or beam.Pipeline(options=pipeline_options)
    rows = (pipeline
            | "ReadCsv" >> beam.Create(csv_rows.read_lines(known_args.input_path))
            | "ParseRows" >> beam.Map(parse_line, base_dir).with_outputs(REJECTED, main="rows"))
    examples = (rows.rows
                | "ReadImages" >> beam.Map(read_image, known_args.max_pixels).with_outputs(REJECTED, main="ok"))
    results = (examples.ok
               | "RunInference" >> RunInference(handler)
               | "FormatResults" >> beam.Map(format_result).with_outputs(REJECTED, main="lines"))
    _ = results.lines | "WriteResults" >> beam.io.WriteToText(known_args.output_path, file_name_suffix=".json")
    _ = ((rows[REJECTED], examples[REJECTED], results[REJECTED])
         | "MergeRejected" >> beam.Flatten()
         | "FormatRejected" >> beam.Map(json.dumps)
         | "WriteRejected" >> beam.io.WriteToText(known_args.output_path + "." + REJECTED,
                                                  file_name_suffix=".json"))
    result = pipeline.run()
    result.wait_until_finish()
    return result


def counts(result):
    """{counter name: value} of this pipeline's counters."""
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    return {c.key.metric.name: c.committed or c.attempted for c in query["counters"]}


def main(argv=None):
    logging.getLogger().setLevel(logging.WARNING)
    known_args, _ = parse_known_args(argv)
    result = run(argv)
    found = counts(result)
    rejected = {k[len("rejected_"):]: v for k, v in found.items() if k.startswith("rejected_")}
    summary = ", ".join(f"{n} {r}" for r, n in sorted(rejected.items())) or "none"
    print(f"{found.get('predicted', 0)} predicted -> {known_args.output_path}-*.json; "
          f"{sum(rejected.values())} rejected ({summary}) -> {known_args.output_path}.{REJECTED}-*.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
