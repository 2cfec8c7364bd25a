"""Training on real embeddings of the shared photos: resume after a kill, metrics, errors,
and no skew between the exported model and the head on preprocessed embeddings."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from flowers.core import backbones, base_path, defaults, records
from flowers.preprocess import pipeline as preprocess
from flowers.train import metrics, trainer as train
from flowers.train.head import build_head, compile_head, hit

BACKBONE = "efficientnet_lite0"
MAX_STEPS, EVAL_EVERY = 400, 20
QUIET_TF = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")  # env of the CLI runs this file starts


@pytest.fixture(scope="module")
def embedded(photos, tmp_path_factory):
    """Real `flowers preprocess` output: train (10 photos per class and one row with two labels)
    and eval (2 other photos per class) records."""
    out = tmp_path_factory.mktemp("records")
    labels = sorted(photos)
    train_rows = [f"{p},{c}" for c in labels for p in photos[c][:10]] + [f"{photos['roses'][10]},roses,tulips"]
    eval_rows = [f"{p},{c}" for c in labels for p in photos[c][12:14]]
    (out / "dict.txt").write_text("".join(f"{c}\n" for c in labels))
    (out / "train_set.csv").write_text("".join(f"{r}\n" for r in train_rows))
    (out / "eval_set.csv").write_text("".join(f"{r}\n" for r in eval_rows))
    meta = preprocess.run(["--input_path", f"{out / 'train_set.csv'},{out / 'eval_set.csv'}",
                           "--input_dict", str(out / "dict.txt"), "--output_path", f"{out / 'train'},{out / 'eval'}",
                           "--backbone", BACKBONE])
    assert [m["counts"]["written"] for m in meta] == [len(train_rows), len(eval_rows)]
    return {"train": records.shard_pattern(str(out / "train")), "eval": records.shard_pattern(str(out / "eval")),
            "labels": labels, "n_train": len(train_rows), "n_eval": len(eval_rows)}


def cli(embedded, output, *extra):
    return [sys.executable, "-m", "flowers", "train", "--train_data_paths", embedded["train"],
            "--eval_data_paths", embedded["eval"], "--output_path", str(output),
            "--max_steps", str(MAX_STEPS), "--eval_every", str(EVAL_EVERY), *extra]


def backup_step(output):
    """The step BackupAndRestore's backup holds (0 when there is none, or while its first is half written)."""
    meta = output / "checkpoints" / "training_metadata.json"
    try:
        return json.loads(meta.read_text())["epoch"] * EVAL_EVERY
    except (FileNotFoundError, json.JSONDecodeError):  # Keras writes it in place, not atomically
        return 0


@pytest.fixture(scope="module")
def resumed(embedded, tmp_path_factory):
    """A CLI run SIGKILLed once its first backup exists, then started again with the same dir."""
    output = tmp_path_factory.mktemp("run")
    first = subprocess.Popen(cli(embedded, output), env=QUIET_TF, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not backup_step(output) and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the first run ended before it could be killed"
    saved = backup_step(output)
    assert saved, "no backup before the kill"
    second = subprocess.run(cli(embedded, output), env=QUIET_TF, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"output": output, "saved_step": saved, "stdout": second.stdout,
            "metrics": json.loads((output / "metrics.json").read_text())}


def scalars(output, run, tag, newest_only=False):
    """{step: value} of a TensorBoard scalar under OUT/logs/<run> (the newest events file: the last run's)."""
    files = sorted((output / "logs" / run).glob("events.out.tfevents.*"), key=os.path.getmtime)
    return {e.step: float(tf.make_ndarray(v.tensor)) for f in (files[-1:] if newest_only else files)
            for e in tf.compat.v1.train.summary_iterator(str(f)) for v in e.summary.value if v.tag == tag}


def test_killed_run_resumes_from_its_backup(resumed):
    saved, m = resumed["saved_step"], resumed["metrics"]
    assert 0 < saved < MAX_STEPS
    assert f"resuming from step {saved} " in resumed["stdout"]
    assert m["resumed_from_step"] == saved and m["steps"] == MAX_STEPS
    # The restarted run evaluated (and logged) only steps after the saved one, up to max_steps.
    restarted = sorted(scalars(resumed["output"], "validation", "evaluation_loss_vs_iterations", newest_only=True))
    assert restarted == list(range(saved + EVAL_EVERY, MAX_STEPS + 1, EVAL_EVERY))
    assert backup_step(resumed["output"]) == MAX_STEPS


def test_backup_torn_by_a_kill_resumes_from_the_one_before(embedded, resumed, tmp_path):
    """A kill while the weights are written leaves a torn file: the run resumes from the previous backup
    (BackupAndRestore's double_checkpoint) instead of failing to load it."""
    output = tmp_path / "run"
    shutil.copytree(resumed["output"], output)
    weights = output / "checkpoints" / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:4096])
    again = subprocess.run(cli(embedded, output), env=QUIET_TF, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from step {MAX_STEPS - EVAL_EVERY} " in again.stdout
    assert json.loads((output / "metrics.json").read_text())["steps"] == MAX_STEPS
    assert backup_step(output) == MAX_STEPS


def test_history_covers_the_whole_run_and_matches_tensorboard(resumed):
    m, output = resumed["metrics"], resumed["output"]
    h = m["history"]
    assert h["steps"] == list(range(EVAL_EVERY, MAX_STEPS + 1, EVAL_EVERY))  # before and after the kill
    assert set(h) == {"steps", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy"}
    assert all(len(v) == len(h["steps"]) for v in h.values())
    assert all(0 <= a <= 1 for a in h["train_accuracy"] + h["eval_accuracy"])
    # It learned: the training loss fell, and the held-out loss ends far below chance's ln 5 = 1.61 (it
    # may already be near its floor at the first evaluation, then drift up as 51 photos are memorised).
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["eval_loss"][-1] < 0.5 * np.log(5)
    # TensorBoard's curves are the history's, and the last eval point is metrics.json's accuracy. The
    # SIGKILL may land before TensorBoard's writer flushed the killed run's last points: those may miss.
    tb = scalars(output, "validation", "evaluation_accuracy_vs_iterations")
    assert set(tb) <= set(h["steps"]) and len(tb) >= len(h["steps"]) - 2
    assert [tb[s] for s in sorted(tb)] == pytest.approx([a for s, a in zip(h["steps"], h["eval_accuracy"])
                                                         if s in tb], abs=1e-6)
    assert tb[MAX_STEPS] == pytest.approx(h["eval_accuracy"][-1], abs=1e-6)
    assert h["eval_accuracy"][-1] == pytest.approx(m["accuracy"], abs=1e-6)
    train_tb = scalars(output, "train", "epoch_loss")  # keyed by epoch: step / EVAL_EVERY - 1
    assert len(train_tb) >= len(h["steps"]) - 2
    assert [train_tb[e] for e in sorted(train_tb)] == pytest.approx(
        [h["train_loss"][e] for e in sorted(train_tb)], abs=1e-6)
    # Non-terminal progress: one line per evaluation of this run, then the summary and the next command.
    lines = resumed["stdout"].splitlines()
    evaluations = [line for line in lines if line.startswith("step ")]
    assert len(evaluations) == (MAX_STEPS - resumed["saved_step"]) // EVAL_EVERY
    assert evaluations[-1].startswith(f"step {MAX_STEPS}/{MAX_STEPS}: train_loss ")
    assert lines[-1] == f"next: flowers deploy --model_dir {output / 'model'} --model_base_path BASE_PATH"


def test_finished_run_does_no_more_training(resumed, embedded):
    output = resumed["output"]
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (output / "checkpoints").iterdir())
    result = train.train(embedded["train"], embedded["eval"], str(output), max_steps=MAX_STEPS,
                         eval_every=EVAL_EVERY, verbose=False)
    assert result["metrics"]["resumed_from_step"] == MAX_STEPS == result["metrics"]["steps"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (output / "checkpoints").iterdir()) == before
    assert result["version"] == 2 and result["export_path"].endswith("model/2")
    assert result["metrics"]["accuracy"] == resumed["metrics"]["accuracy"]
    assert result["metrics"]["history"] == resumed["metrics"]["history"]


def test_a_backup_of_another_head_is_refused_in_one_line(resumed, embedded, capsys):
    code = train.main(["--train_data_paths", embedded["train"], "--eval_data_paths", embedded["eval"],
                       "--output_path", str(resumed["output"]), "--hidden_units", "16"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert err.startswith("flowers train: error: ") and "does not fit this head" in err


def test_metrics_json_and_its_copy_in_the_export(resumed, embedded):
    m, labels = resumed["metrics"], embedded["labels"]
    assert m["backbone"] == BACKBONE and (m["n_train"], m["n_eval"]) == (embedded["n_train"], embedded["n_eval"])
    assert m["accuracy"] >= 0.6 and m["train_accuracy"] >= 0.9 and m["loss"] > 0 and m["wall_time_s"] > 0
    assert list(m["per_class"]) == labels
    assert all(0 <= v["precision"] <= 1 and 0 <= v["recall"] <= 1 for v in m["per_class"].values())
    cm = m["confusion_matrix"]
    assert cm["labels"] == labels and np.array(cm["matrix"]).sum() == embedded["n_eval"]
    assert np.trace(cm["matrix"]) == round(m["accuracy"] * embedded["n_eval"])
    copy = resumed["output"] / "model" / "1" / "assets.extra" / "metrics.json"
    assert json.loads(copy.read_text()) == m


def test_eval_predictions_file_and_its_copy_in_the_export(resumed, embedded):
    output, labels, m = resumed["output"], embedded["labels"], resumed["metrics"]
    text = (output / defaults.EVAL_PREDICTIONS_FILE).read_text()
    assert (output / "model" / "1" / "assets.extra" / defaults.EVAL_PREDICTIONS_FILE).read_text() == text
    rows = [json.loads(line) for line in text.splitlines()]
    size = backbones.get(BACKBONE).embedding_size
    in_records = [records.parse(tf.constant([s.numpy()]), size) for s in
                  tf.data.TFRecordDataset(tf.io.gfile.glob(embedded["eval"]), compression_type="GZIP")]
    assert [r["uri"] for r in rows] == [x["image_uri"].numpy()[0].decode() for x in in_records]
    assert [r["labels"] for r in rows] == [[labels[i] for i in x["label"].values.numpy()] for x in in_records]
    for r in rows:
        assert set(r) == {"uri", "labels", "predicted", "scores"} and len(r["scores"]) == len(labels)
        assert r["predicted"] == labels[int(np.argmax(r["scores"]))] and sum(r["scores"]) == pytest.approx(1, abs=1e-5)
    assert np.mean([r["predicted"] in r["labels"] for r in rows]) == pytest.approx(m["accuracy"])
    # The head in the backup scores the eval embeddings as the file says.
    embeddings = np.concatenate([x["embedding"].numpy() for x in in_records])
    expected = restored_head(output, labels)(embeddings, training=False).numpy()
    np.testing.assert_allclose([r["scores"] for r in rows], expected, atol=1e-6)


def restored_head(output, labels):
    head = compile_head(build_head(backbones.get(BACKBONE).embedding_size, len(labels)))
    head.load_weights(str(output / "checkpoints" / "latest.weights.h5"))
    return head


def test_exported_scores_equal_the_head_on_preprocessed_embeddings(resumed, embedded):
    output, labels = resumed["output"], embedded["labels"]
    size = backbones.get(BACKBONE).embedding_size
    rows = [records.parse(tf.constant([s.numpy()]), size) for s in
            tf.data.TFRecordDataset(tf.io.gfile.glob(embedded["eval"]), compression_type="GZIP")]
    uris = [r["image_uri"].numpy()[0].decode() for r in rows]
    embeddings = np.concatenate([r["embedding"].numpy() for r in rows])
    expected = restored_head(output, labels)(embeddings, training=False).numpy()

    serve = tf.saved_model.load(str(output / "model" / "1")).signatures["serving_default"]
    out = serve(key=tf.constant(uris), image_bytes=tf.constant([open(u, "rb").read() for u in uris]))
    np.testing.assert_allclose(out["scores"].numpy(), expected, atol=1e-5)
    assert out["prediction"].numpy().tolist() == expected.argmax(1).tolist()
    assert [k.decode() for k in out["key"].numpy()] == uris


def test_comma_separated_patterns_train_on_every_match(embedded, tmp_path):
    both = f"{embedded['train']}, {embedded['eval']}"
    result = train.train(both, embedded["eval"], str(tmp_path), max_steps=5, eval_every=3, verbose=False)
    m = result["metrics"]
    assert m["n_train"] == embedded["n_train"] + embedded["n_eval"]
    assert m["steps"] == 5 and m["history"]["steps"] == [3, 5]


def test_ctrl_c_says_that_the_same_command_resumes(embedded, tmp_path):
    run = subprocess.Popen(cli(embedded, tmp_path, "--max_steps", "100000"), env=QUIET_TF,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout.readline().startswith(f"{BACKBONE}: ")  # training starts after this line
    time.sleep(1)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("flowers train:")]
    assert ours == [err.splitlines()[-1]] and "Traceback" not in err
    assert ours[0].startswith("flowers train: interrupted; run the same command again to resume")


def encode(pixels, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **kw)
    return buf.getvalue()


def test_one_request_with_images_of_several_sizes_and_formats(resumed, photos):
    serve = tf.saved_model.load(str(resumed["output"] / "model" / "1")).signatures["serving_default"]
    jpeg = open(photos["sunflowers"][20], "rb").read()
    pixels = tf.io.decode_jpeg(jpeg).numpy()  # the decoder the model uses, so PNG/BMP hold the same pixels
    small = np.asarray(Image.fromarray(pixels).resize((90, 140)))
    batch = {"jpeg": jpeg, "png": encode(pixels, "PNG"), "bmp": encode(pixels, "BMP"),
             "gif": encode(small, "GIF"), "gray_png": encode(small.mean(2).astype(np.uint8), "PNG"),
             "small_jpeg": encode(small, "JPEG", quality=90)}
    out = serve(key=tf.constant(list(batch)), image_bytes=tf.constant(list(batch.values())))
    scores = out["scores"].numpy()
    assert scores.shape == (len(batch), 5)
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    # Lossless copies of the JPEG's pixels score exactly like the JPEG.
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-6)
    np.testing.assert_allclose(scores[2], scores[0], atol=1e-6)
    # Each image scores in the mixed batch as it does alone.
    for i, data in enumerate(batch.values()):
        alone = serve(key=tf.constant(["k"]), image_bytes=tf.constant([data]))["scores"].numpy()[0]
        np.testing.assert_allclose(scores[i], alone, atol=1e-5)


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from flowers.train import trainer as train
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = train.train(*sys.argv[1:4], max_steps=50, eval_every=20, verbose=False, strategy=strategy)
print(json.dumps(result["metrics"]))
"""


def test_mirrored_strategy_over_two_devices(embedded, tmp_path):
    """The multi-GPU code path (MirroredStrategy, per-replica batches, all-reduced gradients),
    on two logical CPU devices: steps count once per global batch, exactly max_steps of them
    though it is no multiple of eval_every, and the head learns."""
    out = subprocess.run([sys.executable, "-c", MIRRORED, embedded["train"], embedded["eval"], str(tmp_path)],
                         env=QUIET_TF, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.splitlines()[-1])
    assert m["replicas"] == 2 and m["steps"] == 50 and m["history"]["steps"] == [20, 40, 50]
    assert m["train_accuracy"] >= 0.9
    assert (tmp_path / "model" / "1" / "saved_model.pb").exists()


def test_summarize_counts_a_prediction_among_several_labels_as_correct():
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    targets = np.array([[1, 0, 0], [0, 0.5, 0.5], [0, 1, 0], [0, 0.5, 0.5]])
    m = metrics.summarize(scores, targets, ["a", "b", "c"])
    assert m["accuracy"] == 0.5
    # A miss on a two-label row is counted against its lowest label id (b here).
    assert m["confusion_matrix"]["matrix"] == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert m["per_class"]["b"] == {"precision": 1.0, "recall": pytest.approx(1 / 3), "support": 3}
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "support": 0}
    expected_loss = -np.mean([np.log(0.7), 0.5 * np.log(0.6) + 0.5 * np.log(0.3), np.log(0.3),
                              0.5 * np.log(0.3) + 0.5 * np.log(0.1)])
    assert m["loss"] == pytest.approx(expected_loss)
    # The Keras metric fit and TensorBoard report has the same meaning.
    assert np.asarray(hit(targets, scores)).tolist() == [1, 1, 0, 0]


def fake_records(prefix, embedding_size=None, labels=("daisy", "roses"), backbone=BACKBONE, label_ids=(0,),
                 metadata=True, rows=3, image_size=None, meta_embedding_size=None):
    """Records with dummy embeddings: enough to fail on, never trained on."""
    spec = backbones.get(backbone)
    with tf.io.TFRecordWriter(f"{prefix}-00000-of-00001.tfrecord.gz", "GZIP") as w:
        for i in range(rows):
            w.write(records.make_example(f"x{i}.jpg", np.ones(embedding_size or spec.embedding_size),
                                         list(label_ids)).SerializeToString())
    meta = {"backbone": backbone, "embedding_size": meta_embedding_size or spec.embedding_size,
            "image_size": image_size or spec.image_size}
    if labels is not None:
        meta["labels"] = list(labels)
    if metadata:
        records.write_metadata(prefix, meta)
    return records.shard_pattern(prefix)


BAD_INPUTS = {
    "records match": lambda d: (str(d / "nothing-*.tfrecord.gz"), fake_records(str(d / "eval"))),
    "no eval records match": lambda d: (fake_records(str(d / "train")),
                                        f"{fake_records(str(d / 'eval'))},{d / 'typo-*.tfrecord.gz'}"),
    "embeddings of size [7]": lambda d: (fake_records(str(d / "train"), embedding_size=7), fake_records(str(d / "eval"))),
    "records are empty": lambda d: (fake_records(str(d / "train")), fake_records(str(d / "eval"), rows=0)),
    "has no labels": lambda d: (fake_records(str(d / "train"), labels=None), fake_records(str(d / "eval"))),
    "disagree on labels": lambda d: (fake_records(str(d / "train")), fake_records(str(d / "eval"), labels=("a", "b"))),
    "disagree on backbone": lambda d: (fake_records(str(d / "train")),
                                       fake_records(str(d / "eval"), backbone="efficientnet_lite2")),
    "the train embeddings were made from 224 px images; efficientnet_lite0 now takes 288 px: preprocess again":
        lambda d: (fake_records(str(d / "train"), image_size=224), fake_records(str(d / "eval"), image_size=224)),
    "the eval embeddings were made from 224 px images": lambda d: (fake_records(str(d / "train")),
                                                                   fake_records(str(d / "eval"), image_size=224)),
    "metadata embedding_size 1280 differs from efficientnet_lite0's 1984 (embeddings of an older flowers?): "
    "preprocess again": lambda d: (fake_records(str(d / "train"), 1280, meta_embedding_size=1280),
                                   fake_records(str(d / "eval"), 1280, meta_embedding_size=1280)),
    "label ids outside": lambda d: (fake_records(str(d / "train"), label_ids=(5,)), fake_records(str(d / "eval"))),
    "cannot read eval metadata": lambda d: (fake_records(str(d / "train")),
                                            fake_records(str(d / "eval"), metadata=False)),
}


@pytest.mark.parametrize("message", list(BAD_INPUTS))
def test_bad_inputs_fail_with_one_line(message, tmp_path, capsys):
    train_glob, eval_glob = BAD_INPUTS[message](tmp_path)
    code = train.main(["--train_data_paths", train_glob, "--eval_data_paths", eval_glob,
                       "--output_path", str(tmp_path / "out"), "--max_steps", "10"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("flowers train: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out" / "model").exists()


# -- the export ------------------------------------------------------------------------------------

def test_signature_takes_bytes_and_returns_key_prediction_label_scores(exported_model):
    fn = tf.saved_model.load(exported_model["version_path"]).signatures["serving_default"]
    assert set(fn.structured_input_signature[1]) == {"key", "image_bytes"}
    held = exported_model["held_out"]
    paths = [p for c in exported_model["labels"] for p in held[c]]
    out = fn(key=tf.constant([str(i) for i in range(len(paths))]),
             image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
    assert out["key"].numpy().tolist() == [str(i).encode() for i in range(len(paths))]
    scores = out["scores"].numpy()
    assert scores.shape == (len(paths), 5)
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    truth = [i for i, c in enumerate(exported_model["labels"]) for _ in held[c]]
    assert np.mean(out["prediction"].numpy() == truth) >= 0.6
    assert [lab.decode() for lab in out["label"].numpy()] == [exported_model["labels"][i]
                                                           for i in out["prediction"].numpy()]


def test_next_version(tmp_path):
    assert base_path.next_version(str(tmp_path / "none")) == 1
    for name in ("1", "7", "notes", "3"):
        (tmp_path / name).mkdir()
    assert base_path.next_version(str(tmp_path)) == 8
