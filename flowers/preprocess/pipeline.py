"""`flowers preprocess`: a Beam pipeline from the lab's CSVs to embedding TFRecords.

    flowers preprocess --input_path data/train_set.csv,data/eval_set.csv --input_dict data/dict.txt \\
        --output_path out/train,out/eval [--backbone efficientnet_lite2] [--cloud --project P
        --region R --temp_location gs://B/tmp] [any Beam pipeline option]

`--input_path` and `--output_path` take one or more comma-separated values, paired in order
(train and eval, say). All pairs run in ONE pipeline that loads the backbone once per worker.
For each pair it writes

    PREFIX-SSSSS-of-NNNNN.tfrecord.gz   one tf.train.Example per good row (flowers.core.records schema)
    PREFIX.rejected.csv                 line,input,reason,message for every skipped row
    PREFIX.metadata.json                backbone, image_size, embedding_size, labels, counts, ...

Bad rows and images are counted, listed and skipped; the run exits 0 unless nothing at all
could be written. Locally it runs on the DirectRunner's batch engine (FnApiRunner, no Prism
download attempt), TensorFlow using every core; `--cloud` runs on Dataflow in the preprocess
container.
"""
import collections
import concurrent.futures
import logging
import os
import sys
import time
import typing

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.utils.windowed_value import WindowedValue

from flowers.core import backbones, images, progress, records, storage
from flowers.core.rejection import Rejection
from flowers.data import rows as csv_rows
from flowers.preprocess import handler as model_handler, options, outputs

_LOGGER = logging.getLogger(__name__)

PROGRESS_EVERY = 100  # log a progress line every this many embedded images (per worker)
METRICS_NAMESPACE = "flowers_preprocess"
REJECTED = "rejected"
DECODE_THREADS = 2  # per worker process; decoding one image is single-threaded
DECODE_AHEAD = 96  # images decoded ahead of inference: more than a batch, so the next one is ready


class Item(typing.NamedTuple):
    """A good CSV row on its way to becoming an Example."""
    split: int  # index of the --input_path/--output_path pair
    line: int
    uri: str
    label_ids: tuple


class Reject(typing.NamedTuple):
    split: int
    line: int
    input: str  # the raw CSV line for row errors, the image uri for image errors
    reason: str
    message: str


def _count(name):
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, name).inc()


def _reject(split, line, input_, reason, message):
    _count(f"rejected_{reason}")
    return beam.pvalue.TaggedOutput(REJECTED, Reject(split, line, input_, reason, message))


class ParseRow(beam.DoFn):
    """(split, line_no, line) -> Item, or a Reject (malformed_row, unknown_label)."""

    def __init__(self, base_dir, label_ids):
        self._base_dir, self._label_ids = base_dir, label_ids

    def process(self, element):
        split, line_no, line = element
        _count("read")
        try:
            row = csv_rows.parse_row(line_no, line, self._base_dir, self._label_ids)
        except Rejection as e:
            yield _reject(split, line_no, csv_rows.line_text(line), e.reason, str(e))
            return
        yield Item(split, line_no, row.uri, row.label_ids)


class ReadImages(beam.DoFn):
    """Item -> (Item, float32 tensor [S, S, 3]) or a Reject. Decoding happens here, before
    RunInference, so one bad image is a counted reject instead of a failed batch.

    Images are decoded DECODE_AHEAD elements ahead on DECODE_THREADS threads: Beam runs this
    fused stage in one thread, so without them decoding and inference take turns; TensorFlow
    releases the GIL, so here they overlap. Outputs keep the input order, window and timestamp."""

    def __init__(self, image_size, max_pixels):
        self._image_size, self._max_pixels = image_size, max_pixels

    def setup(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")

    def start_bundle(self):
        self._pending = collections.deque()

    def process(self, item, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        self._pending.append((self._pool.submit(self._decode, item), timestamp, window))
        while len(self._pending) > DECODE_AHEAD:
            yield self._output(*self._pending.popleft())

    def finish_bundle(self):
        while self._pending:
            yield self._output(*self._pending.popleft())

    def teardown(self):
        self._pool.shutdown()

    def _decode(self, item):  # in a pool thread: no Beam calls (metrics count in the bundle's thread)
        try:
            image_bytes, _ = images.read_image(item.uri, self._max_pixels)
            return item, images.load_image_tensor(image_bytes, self._image_size, probed=True)
        except Rejection as e:
            return item, e

    @staticmethod
    def _output(future, timestamp, window):
        item, result = future.result()
        if isinstance(result, Rejection):
            rejected = _reject(item.split, item.line, item.uri, result.reason, str(result))
            return beam.pvalue.TaggedOutput(REJECTED, WindowedValue(rejected.value, timestamp, [window]))
        return WindowedValue((item, result), timestamp, [window])


class Progress(beam.DoFn):
    """Counts embedded images; logs a line every PROGRESS_EVERY images per worker."""

    def setup(self):
        self._done, self._start = 0, None

    def process(self, element):
        _count("embedded")
        progress.tick(element)  # the local bar (the launcher's process under FnApiRunner)
        self._start = self._start or time.perf_counter()
        self._done += 1
        if self._done % PROGRESS_EVERY == 0:
            rate = self._done / max(time.perf_counter() - self._start, 1e-9)
            _LOGGER.info("embedded %d images (%.1f images/s in this worker)", self._done, rate)
        yield element


def to_example(element):
    item, result = element
    _count("written")
    return records.make_example(item.uri, result.inference, item.label_ids).SerializeToString()


def build(p, jobs, label_names, backbone_name, max_pixels=images.DEFAULT_MAX_PIXELS,
          min_batch_size=options.BATCH_SIZE, max_batch_size=options.BATCH_SIZE):
    """Add the pipeline to `p`. jobs: [(csv_path, [(line_no, line), ...], prefix)]."""
    spec = backbones.get(backbone_name)
    label_ids = {label: i for i, label in enumerate(label_names)}
    names = _names([prefix for _, _, prefix in jobs])

    rows, rejects, events = [], [], []
    for split, (csv_path, lines, _prefix) in enumerate(jobs):
        name = names[split]
        # The launcher reads the CSV (thousands of rows) so that each row keeps its line number,
        # and sets aside rows naming an image an earlier row named: reported, not written twice.
        dupes = csv_rows.duplicate_lines(lines, storage.dirname(csv_path))
        csv_lines = p | f"ReadCsv {name}" >> beam.Create([(split, n, line) for n, line in lines if n not in dupes])
        duplicates = p | f"Duplicates {name}" >> beam.Create(
            [Reject(split, n, uri, "duplicate", f"line {n}: same image as line {first}")
             for n, (uri, first) in sorted(dupes.items())])
        rejects.append(duplicates)
        events.append((csv_lines, duplicates) | f"AllRead {name}" >> beam.Flatten()
                      | f"CountRead {name}" >> beam.Map(lambda e: (e[0], "read")))
        parsed = csv_lines | f"ParseRows {name}" >> beam.ParDo(
            ParseRow(storage.dirname(csv_path), label_ids)).with_outputs(REJECTED, main="rows")
        rows.append(parsed.rows)
        rejects.append(parsed[REJECTED])

    # Every set goes through one RunInference, so each worker loads the backbone once.
    decoded = (
        rows
        | "AllRows" >> beam.Flatten()
        | "Spread" >> beam.Reshuffle()  # spread image reads over workers
        | "ReadImages" >> beam.ParDo(
            ReadImages(spec.image_size, max_pixels)).with_outputs(REJECTED, main="images"))
    rejects.append(decoded[REJECTED])
    handler = model_handler.BackboneModelHandler(backbone_name, min_batch_size, max_batch_size)
    embedded = (
        decoded.images
        | "Embed" >> RunInference(KeyedModelHandler(handler))
        | "Progress" >> beam.ParDo(Progress())
        | "BySet" >> beam.Partition(lambda element, n: element[0].split, len(jobs)))

    all_rejects = rejects | "AllRejects" >> beam.Flatten()
    events.append(all_rejects | "CountRejected" >> beam.Map(lambda r: (r.split, r.reason)))
    rejects_by_set = all_rejects | "RejectsBySet" >> beam.Partition(lambda r, n: r.split, len(jobs))

    done = []
    for split, (_csv, _lines, prefix) in enumerate(jobs):
        name = names[split]
        examples = embedded[split] | f"ToExamples {name}" >> beam.Map(to_example)
        events.append(examples | f"CountWritten {name}" >> beam.Map(lambda _, s=split: (s, "written")))
        done.append(examples | f"WriteRecords {name}" >> beam.io.WriteToTFRecord(
            prefix, file_name_suffix=records.RECORD_SUFFIX, compression_type=CompressionTypes.GZIP))
        done.append(
            rejects_by_set[split]
            | f"FormatRejects {name}" >> beam.Map(outputs.to_csv_line)
            | f"WriteRejects {name}" >> beam.io.WriteToText(
                outputs.rejected_path(prefix), shard_name_template="", header=outputs.REJECTED_HEADER))

    counts = events | "AllEvents" >> beam.Flatten() | "Count" >> beam.combiners.Count.PerElement()
    base = {"backbone": spec.name, "image_size": spec.image_size, "embedding_size": spec.embedding_size,
            "labels": list(label_names), "beam_version": beam.__version__}
    _ = (
        p
        | "Finish" >> beam.Create([None])
        | "WriteMetadata" >> beam.Map(
            outputs.write_all_metadata, beam.pvalue.AsList(counts),
            beam.pvalue.AsList(done | "AllWrites" >> beam.Flatten()),
            [(csv_path, prefix) for csv_path, _, prefix in jobs], base))
    return p


def _names(prefixes):
    """Short transform-label names per output: the prefix's basename, made unique."""
    names = [os.path.basename(str(p).rstrip("/")) or f"set{i}" for i, p in enumerate(prefixes)]
    return names if len(set(names)) == len(names) else [f"{i}:{n}" for i, n in enumerate(names)]


def run(argv=None, test_pipeline=None):
    """Run the pipeline to completion; returns the metadata dict of each --output_path, in order."""
    args = options.parse_args(argv, __doc__)
    label_names = csv_rows.read_dict(args.input_dict)
    jobs = [(path, csv_rows.read_lines(path), prefix) for path, prefix in zip(args.inputs, args.outputs)]
    for prefix in args.outputs:
        outputs.remove_old_outputs(prefix)

    start = time.perf_counter()
    runner = args.options.view_as(StandardOptions).runner
    if _embeds_in_this_process(args.options):
        model_handler.preload(args.backbone)  # loads while Beam plans and runs the CSV stage
    p = test_pipeline or beam.Pipeline(options=args.options)
    build(p, jobs, label_names, args.backbone, args.max_pixels, args.min_batch_size, args.max_batch_size)
    n_rows = sum(len(lines) for _, lines, _ in jobs)
    _LOGGER.info("embedding %d rows with %s on %s", n_rows, args.backbone, runner)
    if "Dataflow" not in str(runner):
        progress.start(n_rows)
    try:
        p.run().wait_until_finish()
    finally:
        progress.stop()
    elapsed = time.perf_counter() - start

    metadata = [records.read_metadata(prefix) for prefix in args.outputs]
    outputs.print_summary(args.outputs, metadata, elapsed)
    return metadata


def _embeds_in_this_process(pipeline_options):
    runner = pipeline_options.view_as(StandardOptions).runner
    mode = pipeline_options.view_as(DirectOptions).direct_running_mode
    return runner in ("FnApiRunner", "DirectRunner", None) and mode != "multi_processing"


def _not_beam_noise(record):
    # Beam 2.77 RunInference warns this on every model load when torch is not installed.
    return not record.getMessage().startswith("Resource module is not available")


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_beam_noise)
    logging.getLogger("flowers").setLevel(logging.INFO)
    try:
        metadata = run(argv)
    except (ValueError, OSError, tf.errors.OpError) as e:  # bad dict, missing CSV: nothing to run
        print(f"flowers preprocess: error: {e}", file=sys.stderr)
        return 2
    if not sum(m["counts"]["written"] for m in metadata):
        print("flowers preprocess: error: no image could be embedded", file=sys.stderr)
        return 1
    if len(metadata) == 2:
        train, evals = (records.shard_pattern(m) for m in options.parse_args(argv).outputs)
        print(f"next: flowers train --train_data_paths '{train}' --eval_data_paths '{evals}' --output_path OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
