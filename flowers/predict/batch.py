"""`flowers batch-predict`: run the exported model over a CSV of images, in Beam
(the lab's ML Engine batch prediction).

    flowers batch-predict --input_path eval_set.csv --output_path out/predictions \\
        --model_dir models/flowers [--label stable | --version N] [--cloud --project P ...]

CSV rows are `uri[,label...]` (labels optional, copied to the output). Writes one
JSON line per image to PREFIX-SSSSS-of-NNNNN.json: {"key", "prediction", "label",
"scores"[, "labels"]}; rows that cannot be read or are not images go to
PREFIX.rejected-SSSSS-of-NNNNN.json with a reason. When the CSV has labels it prints
the accuracy and a per-class summary.

--model_dir is a SavedModel folder, or a TF Serving base path: then the version is
--version N, or the one --label names in models.config (--model_config_file, by default
BASE/../models.config as `flowers deploy` writes it), by default the `stable` one, as
gcloud's default version; the highest version only when the config has no stable label.
"""
import collections
import json
import sys

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import SetupOptions, StandardOptions

from flowers import cli
from flowers.core import base_path, defaults, images, model_config, progress, storage
from flowers.core.rejection import Rejection
from flowers.data import rows as csv_rows
from flowers.preprocess import options
from flowers.serving import errors

NAMESPACE = "batch_predict"
REJECTED = "rejected"


class ModelDirError(ValueError):
    """--model_dir/--label/--version name no SavedModel."""


def parse_args(argv):
    """Our flags, plus args.options: the Beam PipelineOptions (unknown flags are an error)."""
    parser = cli.ArgumentParser(prog="flowers batch-predict", description=__doc__, epilog=options.BEAM_EPILOG)
    parser.add_argument("--input_path", required=True, help="CSV of uri[,label...] rows")
    parser.add_argument("--output_path", required=True, help="output prefix")
    parser.add_argument("--model_dir", required=True, help="SavedModel folder or TF Serving base path")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--label", help=f"version label in models.config (default: {defaults.STABLE} if set)")
    which.add_argument("--version", type=int, help="version folder under a base path")
    parser.add_argument("--model_config_file", help="models.config that holds the labels "
                        "(default: BASE/../models.config)")
    parser.add_argument("--model_name", default=defaults.MODEL_NAME, help="the model's name in models.config")
    parser.add_argument("--signature_name", default="serving_default")
    parser.add_argument("--batch_size", type=int, default=16, help="largest batch per model call")
    parser.add_argument("--max_pixels", type=int, default=images.DEFAULT_MAX_PIXELS)
    options.add_cloud_arg(parser)
    args, pipeline_args = parser.parse_known_args(argv)
    args.options = options.beam_options(parser, args.cloud, pipeline_args)
    return args


def _config_labels(path, model_name):
    if not storage.exists(path):
        return {}
    try:
        return dict(model_config.find(model_config.load(path), model_name).version_labels)
    except KeyError:
        return {}


def resolve_model_dir(path, label=None, version=None, config_path=None, model_name=defaults.MODEL_NAME):
    """(SavedModel folder, how it was chosen). A base path's version: --version, the --label's
    version in models.config, else the stable one, else the highest."""
    if base_path.is_saved_model(path):
        if label or version is not None:
            raise ModelDirError(f"{path} is one SavedModel: --label/--version need a base path (its parent)")
        return path, "as given"
    found = base_path.scan(path)
    if not found:
        raise ModelDirError(f"no SavedModel in {path} nor numbered version folders under it "
                            "(give OUT/model from `flowers train` or a serving base path)")
    if version is not None:
        if version not in found:
            raise ModelDirError(f"no version {version} under {path} (there: {', '.join(map(str, sorted(found)))})")
        return found[version], f"version {version}"
    config_path = config_path or storage.join(storage.dirname(str(path).rstrip("/")), "models.config")
    labels = _config_labels(config_path, model_name)
    if label and label not in labels:
        raise ModelDirError(f"no label {label!r} for model {model_name!r} in {config_path}")
    label = label or (defaults.STABLE if defaults.STABLE in labels else None)
    if label:
        if labels[label] not in found:
            raise ModelDirError(f"{label} -> version {labels[label]}, which is not under {path}")
        return found[labels[label]], f"{label} -> version {labels[label]} ({config_path})"
    return found[max(found)], f"highest version {max(found)} (no {defaults.STABLE} label in {config_path})"


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
    known_args = parse_args(argv)
    pipeline_options = known_args.options
    pipeline_options.view_as(SetupOptions).save_main_session = save_main_session
    model_dir, chosen = resolve_model_dir(known_args.model_dir, known_args.label, known_args.version,
                                          known_args.model_config_file, known_args.model_name)
    base_dir = storage.dirname(known_args.input_path)
    handler = SavedModelHandler(model_dir, known_args.signature_name, known_args.batch_size)
    lines = csv_rows.read_lines(known_args.input_path)
    print(f"model {model_dir} ({chosen}); {len(lines)} rows", file=sys.stderr)
    local = "Dataflow" not in str(pipeline_options.view_as(StandardOptions).runner)

    pipeline = test_pipeline or beam.Pipeline(options=pipeline_options)
    rows = (pipeline
            | "ReadCsv" >> beam.Create(lines)
            | "ParseRows" >> beam.Map(parse_line, base_dir).with_outputs(REJECTED, main="rows"))
    examples = (rows.rows
                | "ReadImages" >> beam.Map(read_image, known_args.max_pixels).with_outputs(REJECTED, main="ok"))
    results = (examples.ok
               | "RunInference" >> RunInference(handler)
               | "Progress" >> beam.Map(progress.tick)
               | "FormatResults" >> beam.Map(format_result).with_outputs(REJECTED, main="lines"))
    _ = results.lines | "WriteResults" >> beam.io.WriteToText(known_args.output_path, file_name_suffix=".json")
    _ = ((rows[REJECTED], examples[REJECTED], results[REJECTED])
         | "MergeRejected" >> beam.Flatten()
         | "FormatRejected" >> beam.Map(json.dumps)
         | "WriteRejected" >> beam.io.WriteToText(known_args.output_path + "." + REJECTED,
                                                  file_name_suffix=".json"))
    if local:
        progress.start(len(lines))
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        progress.stop()
    return result


def counts(result):
    """{counter name: value} of this pipeline's counters."""
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    return {c.key.metric.name: c.committed or c.attempted for c in query["counters"]}


def accuracy(output_path):
    """{"right", "total", "per_class": {label: (right, total)}} over the rows with labels, from
    the written predictions (first label = the truth); None when no row has one."""
    per_class = collections.defaultdict(lambda: [0, 0])
    for path in storage.glob(f"{output_path}-*.json"):
        for line in storage.read_text(path).splitlines():
            row = json.loads(line)
            if row.get("labels"):
                counts_ = per_class[row["labels"][0]]
                counts_[0] += row["label"] == row["labels"][0]
                counts_[1] += 1
    if not per_class:
        return None
    return {"right": sum(r for r, _ in per_class.values()), "total": sum(t for _, t in per_class.values()),
            "per_class": {label: tuple(c) for label, c in sorted(per_class.items())}}


def main(argv=None):
    known_args = parse_args(argv)
    try:
        result = run(argv)
    except (ModelDirError, OSError, ValueError) as e:
        return cli.fail("flowers batch-predict", e)
    found = counts(result)
    rejected = {k[len("rejected_"):]: v for k, v in found.items() if k.startswith("rejected_")}
    summary = ", ".join(f"{n} {r}" for r, n in sorted(rejected.items())) or "none"
    print(f"{found.get('predicted', 0)} predicted -> {known_args.output_path}-*.json; "
          f"{sum(rejected.values())} rejected ({summary}) -> {known_args.output_path}.{REJECTED}-*.json")
    scores = accuracy(known_args.output_path)
    if scores:
        print(f"accuracy {scores['right'] / scores['total']:.3f} ({scores['right']}/{scores['total']} labelled rows)")
        for label, (right, total) in scores["per_class"].items():
            print(f"  {label:16} {right / total:.3f} ({right}/{total})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
