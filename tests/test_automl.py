"""`flowers automl` end to end on real photos (killed mid-search, resumed, served), the Katib
Experiment it ships for clusters, and the compiled AutoML pipeline."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import kubernetes_validate
import numpy as np
import optuna
import pytest
import yaml

from flowers import testing
from flowers.automl import katib, space
from flowers.core import backbones, images
from flowers.predict import client

from conftest import CLASSES, ROOT

PER_CLASS, TRIALS, FINE_TUNE_EPOCHS = 10, 4, 2
AUDIT_PER_CLASS = 40
BACKBONE = "efficientnet_lite0"
KATIB_STDOUT_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"  # Katib's default metrics filter


def automl(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "flowers", "automl", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def finished_trials(study_path):
    if not os.path.exists(study_path):
        return []
    try:
        study = optuna.load_study(study_name="flowers-automl", storage=f"sqlite:///{study_path}")
    except KeyError:  # created, no study row yet
        return []
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [(t.number, t.value, t.params) for t in study.get_trials(states=states)]


def kill_when(process, done, what):
    deadline = time.time() + 900
    while not done() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    log = process.communicate()[0]
    assert done(), f"{what} before the kill:\n{log[-3000:]}"
    return log


@pytest.fixture(scope="module")
def run(photos, tmp_path_factory):
    """A photo tree of PER_CLASS photos per class; `flowers automl` killed once a trial has finished,
    refused without --resume, resumed and killed again once fine-tuning's first epoch is backed up,
    then resumed to the end."""
    root = tmp_path_factory.mktemp("photos")
    for c in CLASSES:
        (root / c).mkdir()
        for p in photos[c][:PER_CLASS]:
            os.symlink(p, root / c / os.path.basename(p))
    out = tmp_path_factory.mktemp("automl") / "out"
    args = [str(root), "--output", str(out), "--backbones", BACKBONE, "--trials", str(TRIALS),
            "--fine_tune_epochs", str(FINE_TUNE_EPOCHS), "--budget_minutes", "40"]
    study_path = str(out / "study.sqlite3")

    kill_when(automl(*args), lambda: finished_trials(study_path), "no trial finished")
    before = finished_trials(study_path)
    assert not (out / "model").exists(), "the kill came too late: the first run had finished"

    refused = automl(*args)
    refused_log = refused.communicate(timeout=600)[0]

    backup = out / "finetune" / BACKBONE / "backup" / "training_metadata.json"  # BackupAndRestore's epoch
    mid_fine_tune_log = kill_when(automl(*args, "--resume"), backup.exists, "no fine-tuning epoch backed up")
    assert not (out / "model").exists(), "the kill came too late: the resumed run had finished"

    resumed = automl(*args, "--resume")
    resumed_log = resumed.communicate(timeout=1800)[0]
    assert resumed.returncode == 0, resumed_log[-4000:]
    return {"out": out, "before": before, "refused": (refused.returncode, refused_log),
            "log": mid_fine_tune_log + resumed_log, "final_log": resumed_log, "after": finished_trials(study_path),
            "held_out": {c: photos[c][PER_CLASS:PER_CLASS + 2] for c in CLASSES}}


def test_a_study_is_not_overwritten_without_resume(run):
    code, log = run["refused"]
    assert code == 1 and "pass --resume" in log


def test_resume_keeps_the_finished_trials_and_the_embeddings(run):
    after = {n: (v, p) for n, v, p in run["after"]}
    for number, value, params in run["before"]:
        assert after[number] == (value, params)  # kept, not re-run
    assert len(run["after"]) == TRIALS
    assert f"{BACKBONE}: cached embeddings" in run["log"]
    with open(run["out"] / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert {int(r["number"]) for r in rows} >= set(after)
    for r in rows:
        if r["state"] == "COMPLETE":
            assert 0 <= float(r["value"]) <= 1 and 0 <= float(r["eval_accuracy"]) <= 1
            assert float(r["duration_s"]) > 0 and r["backbone"] == BACKBONE
            assert {name for name, *_ in space.PARAMETERS} <= set(r)


def test_summary_says_what_it_had_time_for(run):
    summary = json.loads((run["out"] / "summary.json").read_text())
    assert summary["did"][0] == f"search: {TRIALS} of {TRIALS} trials finished"
    assert summary["did"][1].startswith("label audit: ")
    assert summary["did"][2] == f"head-features search: {TRIALS} of {TRIALS} trials finished"
    assert summary["did"][3].startswith(f"fine-tune {BACKBONE}: ")
    assert summary["winner"]["kind"] in ("frozen", "fine-tuned")
    assert "had time for: search" in run["log"]


def test_a_fine_tune_killed_after_an_epoch_resumes_from_it_and_keeps_its_history(run):
    final = run["final_log"]
    assert "fine-tune: resumed after epoch 1 (its backup)" in final
    assert f"fine-tune: epoch 1/{FINE_TUNE_EPOCHS} loss" not in final  # not run again
    tuned = json.loads((run["out"] / "summary.json").read_text())["fine_tune"][BACKBONE]
    assert tuned["epochs"] == FINE_TUNE_EPOCHS
    assert len(tuned["history"]["val_accuracy"]) == len(tuned["history"]["loss"]) == FINE_TUNE_EPOCHS


def test_fine_tuning_starts_from_the_best_head_on_the_features_it_reads(run):
    """Its own search (on a Lite embedding's last 1280 values), not the frozen search's best head."""
    from flowers.automl import search

    study = search.open_study(str(run["out"] / "study_finetune.sqlite3"), resume=True)
    best = search.best_per_backbone(study)[BACKBONE]
    summary = json.loads((run["out"] / "summary.json").read_text())
    assert summary["fine_tune"][BACKBONE]["head_params"] == dict(best.params, best_epoch=best.user_attrs["best_epoch"])
    with open(run["out"] / "trials_finetune.csv") as f:
        assert len(list(csv.DictReader(f))) == TRIALS
    assert "head features: trial " in run["log"]


def test_the_label_audit_lists_a_planted_wrong_label_among_the_doubted(run, photos, tmp_path):
    """A daisy relabelled sunflowers among AUDIT_PER_CLASS photos a class: heads that never saw it
    call it something else. (On the run's 10 photos a class the out-of-fold heads are right on about
    60 % of the rows, so whether one given photo is doubted there is a coin toss.)"""
    from flowers.automl import label_audit, search

    out = run["out"]
    best = search.best_per_backbone(search.open_study(str(out / "study.sqlite3"), resume=True))[BACKBONE]
    params = dict(best.params, best_epoch=space.EPOCHS)
    spec = backbones.get(BACKBONE)
    chosen = [(c, p) for c in CLASSES for p in photos[c][PER_CLASS:PER_CLASS + AUDIT_PER_CLASS]]
    uris = [p for _, p in chosen]
    x = backbones.load(BACKBONE).predict(
        np.stack([images.load_image(open(p, "rb").read(), spec.image_size) for p in uris]), batch_size=32, verbose=0)
    y = np.eye(len(CLASSES), dtype=np.float32)[[CLASSES.index(c) for c, _ in chosen]]
    planted = uris.index(photos["daisy"][PER_CLASS])
    y[planted] = np.eye(len(CLASSES))[CLASSES.index("sunflowers")]
    data = {"fit": (uris, x, y), "val": ([], x[:0], y[:0]), "labels": list(CLASSES),
            "embedding_size": spec.embedding_size}
    doubted, rows = label_audit.audit(params, data, str(tmp_path / "issues.csv"))
    with open(tmp_path / "issues.csv") as f:
        listed = list(csv.DictReader(f))
    assert rows == len(uris) and 0 < doubted == len(listed) < rows / 4
    row = next(r for r in listed if r["uri"] == uris[planted])
    assert row["label"] == "sunflowers" and row["predicted"] != "sunflowers"
    scores = [float(r["label_score"]) for r in listed]
    assert scores == sorted(scores) and all(r["predicted"] != r["label"] for r in listed)
    assert (out / "label_issues.csv").read_text().startswith(",".join(label_audit.COLUMNS))


def test_the_served_model_is_the_evaluated_one(run):
    """Scores served over REST from raw bytes == the scores the evaluation files hold (which
    the exported signature computed): what was evaluated is what is served."""
    out = run["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    version_dir = out / "model" / str(metrics["version"])
    assert json.loads((version_dir / "assets.extra" / "metrics.json").read_text()) == metrics
    report = (version_dir / "assets.extra" / "report.html").read_text()  # the console's full report
    assert report == (out / "report.html").read_text() and "Confusion matrix" in report
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["n_eval"] == len(CLASSES)  # 10 % of 10 per class
    assert metrics["accuracy"] == pytest.approx(np.mean([r["predicted"] in r["labels"] for r in rows]))
    uris = [r["uri"] for r in rows] + [p for c in CLASSES for p in run["held_out"][c]]
    truth = [r["labels"][0] for r in rows] + [c for c in CLASSES for _ in run["held_out"][c]]

    config = testing.write_config_files(str(out), "flowers", str(out / "model"))
    with testing.running(config) as (rest_url, _):
        preds = client.RestClient(rest_url).predict([open(u, "rb").read() for u in uris], keys=uris)
    for row, pred in zip(rows, preds):
        assert pred["label"] == row["predicted"]
        np.testing.assert_allclose(pred["scores"], row["scores"], atol=1e-5)
    right = sum(p["label"] == t for p, t in zip(preds, truth))
    # A head fitted on 35 photos for a few epochs: 9 of 15 right has a chance of 1e-3 at random (1 in 5).
    assert right >= 0.6 * len(uris), f"{right}/{len(uris)} photos right"


def test_fine_tuning_sees_the_served_pixels(photos):
    """Validation images in fine-tuning are THE image function's pixels, bit for bit; training
    images are windows of those pixels, 1 / CROP_SCALE of each side."""
    from flowers.automl import finetune, tuned_model

    paths = [photos[c][0] for c in CLASSES]
    size = backbones.get("efficientnet_lite0").image_size
    ds = finetune.eval_dataset(paths, np.eye(len(paths), dtype=np.float32), size, batch_size=len(paths))
    pixels = next(iter(ds))[0].numpy()
    for path, got in zip(paths, pixels):
        np.testing.assert_array_equal(got, images.load_image(open(path, "rb").read(), size))
    train = next(iter(finetune.train_dataset(paths, np.eye(len(paths), dtype=np.float32), size, len(paths))))[0]
    crop = round(size / tuned_model.CROP_SCALE)
    assert train.shape == (len(paths), crop, crop, 3)
    assert 0 <= float(np.min(train)) and float(np.max(train)) <= 255


def test_the_fine_tuned_backbone_gives_the_features_its_first_head_learnt(photos):
    """Fine-tuning reads the Lite head's features alone; its first head is trained on the search's
    embeddings cut to the same values (tuned_model.head_features_data): the last 1280, in order."""
    from flowers.automl import tuned_model

    name = "efficientnet_lite0"
    size = backbones.get(name).image_size
    x = np.stack([images.load_image(open(photos[c][0], "rb").read(), size) for c in CLASSES[:2]])
    embedding = backbones.load(name).predict(x, verbose=0)
    params = {"hidden_units": 8, "dropout": 0.1, "weight_decay": 0.0, "label_smoothing": 0.0}
    _, backbone, head = tuned_model.build(name, params, None, len(CLASSES))
    features = backbone.predict(x, verbose=0)
    assert features.shape == (2, tuned_model.HEAD_FEATURES) and head.input_shape == (None, tuned_model.HEAD_FEATURES)
    split = ([], embedding, np.eye(2, dtype=np.float32))
    data = {"backbone": name, "embedding_size": embedding.shape[1], "fit": split, "val": split, "eval": split}
    cut = tuned_model.head_features_data(data)
    assert cut["embedding_size"] == tuned_model.HEAD_FEATURES
    np.testing.assert_allclose(cut["fit"][1], features, rtol=1e-4, atol=1e-4)
    assert embedding.shape[1] > tuned_model.HEAD_FEATURES  # the pooled stages are there to cut away


def test_fine_tuning_leaves_the_stem_and_first_stages_as_pretrained(photos):
    """The stem and lite0's first FROZEN_STAGES stages (16, 24, 40 channels: blocks 0 to 4) keep their
    ImageNet weights through a training step on real photos; every later layer learns."""
    from flowers.automl import tuned_model

    name = "efficientnet_lite0"
    size = backbones.get(name).image_size
    x = np.stack([images.load_image(open(photos[c][0], "rb").read(), size) for c in CLASSES])
    params = {"hidden_units": 8, "dropout": 0.0, "weight_decay": 0.0, "label_smoothing": 0.0}
    model, backbone, _ = tuned_model.build(name, params, None, len(CLASSES))
    layers = [layer for layer in backbone.layers if layer.weights]
    before = {layer.name: layer.get_weights() for layer in layers}
    model.optimizer.learning_rate = 1e-3  # flowers.automl.finetune.BudgetSchedule sets it in a real run
    model.fit(x, np.eye(len(CLASSES), dtype=np.float32), batch_size=len(CLASSES), epochs=1, verbose=0)
    frozen = [layer.name for layer in layers if not layer.trainable]
    assert frozen[0] == "stem" and frozen[-1] == "block4_project"
    for layer in layers:
        unchanged = all(np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights()))
        assert unchanged == (layer.name in frozen), layer.name


def test_the_fine_tuned_backbone_drops_paths_in_training_only(photos):
    """Stochastic depth: in training (what model.fit runs) lite0's identity blocks drop their residual
    branch for random samples, at rates rising to DROP_PATH; in inference the scores are those of the
    same weights without it, so export and serving see no difference."""
    from flowers.automl import tuned_model
    from flowers.core.backbones import efficientnet_lite

    name = "efficientnet_lite0"
    size = backbones.get(name).image_size
    x = np.stack([images.load_image(open(photos[c][i], "rb").read(), size) for c in CLASSES for i in range(2)])
    params = {"hidden_units": 8, "dropout": 0.0, "weight_decay": 0.0, "label_smoothing": 0.0}
    model, backbone, head = tuned_model.build(name, params, None, len(CLASSES))
    plain, plain_backbone, plain_head = tuned_model.build(name, params, None, len(CLASSES), drop_path=0.0)
    plain_head.set_weights(head.get_weights())
    rates = [layer.rate for layer in backbone.layers if isinstance(layer, efficientnet_lite.DropPathAdd)]
    assert len(rates) == 9 and rates == sorted(rates) and 0 < rates[0] < rates[-1] < tuned_model.DROP_PATH
    assert not any(isinstance(layer, efficientnet_lite.DropPathAdd) for layer in plain_backbone.layers)
    served = model.predict(x, verbose=0)
    np.testing.assert_allclose(served, model.predict(x, verbose=0))
    np.testing.assert_allclose(served, plain.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    trained = [np.asarray(model(x, training=True)) for _ in range(2)]
    assert np.abs(trained[0] - served).max() > 1e-3 and np.abs(trained[0] - trained[1]).max() > 1e-3
    np.testing.assert_allclose(np.asarray(plain(x, training=True)), served, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seconds_left", [3600, 0.01])
def test_the_learning_rate_decays_to_zero_by_the_last_step_or_the_deadline(seconds_left):
    import keras

    from flowers.automl import finetune

    class Record(keras.callbacks.Callback):
        rates = []

        def on_train_batch_end(self, batch, logs=None):
            self.rates.append(float(self.model.optimizer.learning_rate))

    steps, peak = 20, 1e-3
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.AdamW(0.0), loss="mse")
    schedule = finetune.BudgetSchedule(peak, steps, time.time() + seconds_left)
    model.fit(np.zeros((steps, 2)), np.zeros((steps, 1)), batch_size=1, epochs=1, verbose=0,
              callbacks=[schedule, Record()])
    if seconds_left > 60:  # by steps: warm-up, then cosine decay
        expected = [finetune.rate_at(peak, i / steps) for i in range(steps)]
        assert Record.rates[0] < 0.01 * peak  # the time spent tips the first batch off 0
        np.testing.assert_allclose(Record.rates[1:], expected[1:], rtol=1e-5)
        assert max(Record.rates) == pytest.approx(peak, rel=0.05) and Record.rates[-1] < 0.01 * peak
    else:  # the deadline has passed: the run is over as far as the rate is concerned
        assert max(Record.rates[1:]) == 0.0


def test_no_epoch_starts_after_the_deadline():
    import keras

    from flowers.automl import finetune

    lines = []
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    progress = finetune.Progress(epochs=5, steps=4, deadline=time.time() + 3600, log=lines.append)
    model.fit(np.zeros((8, 2)), np.zeros((8, 1)), batch_size=2, epochs=2, verbose=0, callbacks=[progress])
    assert not progress.stopped_by_deadline and len(lines) == 2  # one line an epoch, both run
    progress.deadline = time.time() - 1  # passed while the last batch ran: stop at the epoch's end
    progress.on_epoch_end(1, {"loss": 0.0, "val_accuracy": 0.5})
    assert model.stop_training and progress.stopped_by_deadline


def test_the_fine_tune_history_keeps_the_rerun_of_an_epoch_logged_before_a_kill(tmp_path):
    """CSVLogger writes an epoch's row before BackupAndRestore saves it: killed between the two, the
    resumed fit runs that epoch again and appends it a second time."""
    import keras

    from flowers.automl import finetune

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x, y, path = np.ones((8, 2)), np.ones((8, 1)), str(tmp_path / finetune.HISTORY)
    model.fit(x, y, batch_size=2, epochs=2, validation_data=(x, y), verbose=0,
              callbacks=[keras.callbacks.CSVLogger(path, append=True)])
    resumed = model.fit(x, y, batch_size=2, epochs=3, initial_epoch=1, validation_data=(x, y), verbose=0,
                        callbacks=[keras.callbacks.CSVLogger(path, append=True)])  # the backup held epoch 0
    with open(path) as f:
        assert [row.split(",")[0] for row in f.read().split()[1:]] == ["0", "1", "1", "2"]
    history = finetune.read_history(path)
    assert len(history["val_loss"]) == 3 and history["val_loss"][1:] == pytest.approx(resumed.history["val_loss"])


def test_early_stopping_counts_its_patience_from_when_the_schedule_has_cooled():
    import keras

    from flowers.automl import finetune

    peak = 1e-3
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.AdamW(peak), loss="mse")
    early = finetune.CooledEarlyStopping(peak, monitor="val_accuracy", mode="max", patience=2)
    early.set_model(model)
    early.on_train_begin()
    early.on_epoch_end(0, {"val_accuracy": 0.9})
    for epoch in range(1, 6):  # a plateau at the peak rate: no stop
        early.on_epoch_end(epoch, {"val_accuracy": 0.8})
        assert not model.stop_training
    model.optimizer.learning_rate = 0.4 * peak  # cooled: patience counts from here, against the best (0.9)
    early.on_epoch_end(6, {"val_accuracy": 0.8})
    assert not model.stop_training
    early.on_epoch_end(7, {"val_accuracy": 0.8})
    assert model.stop_training and early.stopped_epoch == 7 and early.best == 0.9

    model.stop_training, model.optimizer.learning_rate = True, peak  # the deadline stopped it: that stands
    early.on_epoch_end(8, {"val_accuracy": 0.8})
    assert model.stop_training


def test_the_best_checkpoint_breaks_ties_on_val_loss_and_keeps_its_best_through_a_resume(tmp_path):
    import keras

    from flowers.automl import finetune

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = str(tmp_path / "best.weights.h5")

    def epoch(checkpoint, number, accuracy, loss):
        model.set_weights([np.full((2, 1), float(number)), np.zeros(1)])  # weights that name the epoch
        checkpoint.on_epoch_end(number, {"val_accuracy": accuracy, "val_loss": loss})

    first = finetune.BestCheckpoint(path)
    first.set_model(model)
    first.on_train_begin()
    for number, accuracy, loss in [(0, 0.8, 0.5), (1, 0.9, 0.4), (2, 0.9, 0.3), (3, 0.9, 0.35), (4, 0.85, 0.1)]:
        epoch(first, number, accuracy, loss)
    model.load_weights(path)
    assert model.get_weights()[0][0, 0] == 2  # the tie at 0.9 went to the lower loss, not the first epoch

    resumed = finetune.BestCheckpoint(path)  # after a kill: a new callback, the same folder
    resumed.set_model(model)
    resumed.on_train_begin()
    epoch(resumed, 5, 0.85, 0.2)  # worse than epoch 2: ModelCheckpoint would save it (it starts from -inf)
    model.load_weights(path)
    assert model.get_weights()[0][0, 0] == 2 and resumed.best["epoch"] == 2


def test_a_resumed_run_reuses_a_fine_tune_that_had_finished(photos, tmp_path):
    """A kill after lite0's fine-tune (during lite2's, say) does not cost lite0's epochs again."""
    from flowers.automl import finetune

    name = "efficientnet_lite0"
    targets = np.eye(len(CLASSES), dtype=np.float32)
    split = lambda k: ([photos[c][k] for c in CLASSES], None, targets)  # noqa: E731
    data = {"backbone": name, "labels": CLASSES, "fit": split(0), "val": split(1)}
    params = {"hidden_units": 8, "dropout": 0.0, "weight_decay": 0.0, "label_smoothing": 0.0}
    logs = [], []
    first, again = (finetune.fine_tune(data, params, None, str(tmp_path), time.time() + 600, epochs=1,
                                       batch_size=len(CLASSES), log=log.append) for log in logs)
    assert any("epoch 1/1" in line for line in logs[0]), logs[0]
    assert not any("epoch 1/1" in line for line in logs[1]) and "its best epoch reused" in logs[1][0], logs[1]
    assert again["history"] == first["history"] and again["stopped"] == first["stopped"]
    np.testing.assert_allclose(again["val_scores"], first["val_scores"], atol=1e-5)


def test_an_ensemble_serves_its_members_mean_scores(photos, tmp_path):
    """Each member gets THE image function's pixels at its own size; the signature returns the mean."""
    import keras
    import tensorflow as tf

    from flowers.train import export, head as head_lib

    members = []
    for seed, name in enumerate(("efficientnet_lite0", "efficientnet_lite1")):  # 288 and 240 px
        keras.utils.set_random_seed(seed)
        members.append((name, backbones.load(name), head_lib.build_head(backbones.get(name).embedding_size, len(CLASSES))))
    path = export.export_members(members, list(CLASSES), str(tmp_path / "model"))

    paths = [photos[c][0] for c in CLASSES]
    raw = [open(p, "rb").read() for p in paths]
    each = [head(model(np.stack([images.load_image(b, backbones.get(name).image_size) for b in raw]),
                       training=False), training=False).numpy() for name, model, head in members]
    assert not np.allclose(each[0], each[1], atol=1e-3)  # the mean below tells the members apart
    out = tf.saved_model.load(path).signatures["serving_default"](key=tf.constant(paths), image_bytes=tf.constant(raw))
    np.testing.assert_allclose(out["scores"].numpy(), np.mean(each, axis=0), atol=1e-5)
    assert out["prediction"].numpy().tolist() == np.mean(each, axis=0).argmax(1).tolist()


def test_the_fine_tuned_ensemble_is_kept_unless_it_validates_worse_beyond_noise():
    from flowers.automl import run as automl_run

    reps = 25  # 100 validation rows: one standard error of 0.8 is 0.04
    targets = np.tile(np.eye(2, dtype=np.float32)[[0, 0, 1, 1]], (reps, 1))
    data = {"fit": (["f"], None, targets[:1]), "val": ([f"v{i}" for i in range(len(targets))], None, targets),
            "eval": (["e"], None, targets[:1])}

    def candidate(name, val_scores, val_accuracy):
        return {"kind": "fine-tuned", "members": [(name, None, None)], "val_accuracy": val_accuracy,
                "val_scores": np.tile(val_scores, (reps, 1)), "eval_scores": np.array([[0.6, 0.4]]),
                "params": {"backbone": name}, "data": data, "train_accuracy": 0.9, "train_loss": 0.3, "steps": 10}

    # Each member is wrong on a different row, with less confidence than the other is right.
    a = candidate("a", [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.2, 0.8]], 0.75)
    b = candidate("b", [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9]], 0.75)
    summary = {"did": []}
    chosen = automl_run._ensemble([a, b], a, summary)
    assert chosen["kind"] == "ensemble" and [m[0] for m in chosen["members"]] == ["a", "b"]
    assert summary["ensemble"] == {"members": ["a", "b"], "val_accuracy": 1.0, "eval_accuracy": 1.0,
                                   "kept_from_val_accuracy": pytest.approx(0.75 - 0.0433, abs=1e-4)}
    assert chosen["steps"] == 20
    # The ensemble of a and `worse` validates at 0.75: under 0.8 by more than one standard error (0.76),
    # under 0.78 by less (0.7386); a tie at 1.0 goes to the ensemble.
    worse = candidate("b", [[0.05, 0.95], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9]], 0.75)  # mean: wrong on row 0
    better = dict(a, val_accuracy=0.8)
    assert automl_run._ensemble([a, worse], better, {"did": []}) is better
    assert automl_run._ensemble([a, worse], dict(a, val_accuracy=0.78), {"did": []})["kind"] == "ensemble"
    assert automl_run._ensemble([a, b], dict(a, val_accuracy=1.0), {"did": []})["kind"] == "ensemble"


def test_a_fine_tuned_model_replaces_a_frozen_head_within_noise_and_a_fine_tuned_one_only_at_least_as_good():
    from flowers.automl import run as automl_run

    data = {"val": ([f"v{i}" for i in range(100)], None, None)}  # one standard error of 0.8: 0.04
    frozen = {"kind": "frozen", "val_accuracy": 0.8, "data": data}
    assert automl_run._bar(frozen) == pytest.approx(0.76)
    assert automl_run._bar(dict(frozen, kind="frozen ensemble")) == pytest.approx(0.76)
    assert automl_run._bar(dict(frozen, kind="fine-tuned")) == 0.8


# A head that memorises what it trains on, for synthetic features.
HEAD = {"learning_rate": 1e-2, "weight_decay": 1e-6, "dropout": 0.0, "label_smoothing": 0.0, "hidden_units": 256,
        "batch_size": 64, "best_epoch": 15}


def synthetic(x, labels, name, n_labels=5):
    """(params, data) as `flowers automl` has them per backbone, for features x: 80 % fit, 20 % val."""
    y = np.eye(n_labels, dtype=np.float32)[labels]
    uris, cut = [f"row{i:04d}" for i in range(len(x))], len(x) * 4 // 5
    data = {"fit": (uris[:cut], x[:cut], y[:cut]), "val": (uris[cut:], x[cut:], y[cut:]),
            "eval": (uris[cut:], x[cut:], y[cut:]), "labels": [str(i) for i in range(n_labels)],
            "backbone": name, "embedding_size": x.shape[1]}
    return dict(HEAD, backbone=name), data


def test_out_of_fold_scores_come_from_heads_that_never_saw_the_row():
    """Random features, random labels: a head memorises its own rows and can only guess on others,
    so out-of-fold accuracy stays near chance unless a row is scored by a head that trained on it."""
    from flowers.automl import search

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    params, data = synthetic(rng.normal(size=(200, 64)).astype(np.float32), labels, "noise")
    scores, targets = search.out_of_fold_scores(params, data, 3)
    np.testing.assert_array_equal(targets.argmax(axis=1), labels)  # every train row: fit, then val
    assert search.accuracy(scores, targets) < 0.4
    head, _ = search.train_head(params, data, epochs=params["best_epoch"])
    assert search.accuracy(head.predict(data["fit"][1], verbose=0), data["fit"][2]) > 0.95  # it does memorise
    folds = search.stratified_folds(targets, 3)
    for label in range(5):  # every class spread evenly over the folds
        counts = np.bincount(folds[labels == label], minlength=3)
        assert counts.max() - counts.min() <= 1


def test_the_exported_frozen_head_is_refit_on_every_train_row_and_serves_its_heads_mean(photos, tmp_path):
    """Random labels: a head gets a row right only if it trained on it. The head whose validation
    figure chooses never saw the validation rows; the exported head, refit, learned them. It is one
    Keras model averaging REFIT_HEADS heads of different initial seeds, and the SavedModel serves that
    mean of the backbone's features of the photos."""
    import tensorflow as tf

    from flowers.automl import search
    from flowers.train import export

    name = "efficientnet_lite0"
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, backbones.get(name).embedding_size)).astype(np.float32)
    params, data = synthetic(x, rng.integers(0, 5, 200), "noise")
    head, _ = search.train_head(params, data, epochs=params["best_epoch"])
    refit = search.refit_head(params, data)
    on = lambda h, split: search.accuracy(h.predict(data[split][1], verbose=0), data[split][2])  # noqa: E731
    assert on(head, "val") < 0.4 and on(refit, "val") > 0.95
    assert on(refit, "fit") > 0.95

    model = backbones.load(name)
    path = export.export_members([(name, model, refit)], list(CLASSES), str(tmp_path / "model"))
    paths = [photos[c][0] for c in CLASSES]
    raw = [open(p, "rb").read() for p in paths]
    features = model(np.stack([images.load_image(b, backbones.get(name).image_size) for b in raw]), training=False)
    each = [refit.get_layer(f"head_{i}")(features).numpy() for i in range(search.REFIT_HEADS)]
    assert not np.allclose(each[0], each[1], atol=1e-3)  # different seeds, different heads
    out = tf.saved_model.load(path).signatures["serving_default"](key=tf.constant(paths), image_bytes=tf.constant(raw))
    np.testing.assert_allclose(out["scores"].numpy(), np.mean(each, axis=0), atol=1e-5)


def test_the_frozen_ensemble_replaces_the_best_head_only_when_it_wins_out_of_fold():
    """Two noisy views of the same classes err on different rows, so their heads' mean beats either
    out of fold and is chosen; a head on pure noise only drags the mean down, and the single stays."""
    from flowers.automl import run as automl_run, search

    rng = np.random.default_rng(1)
    labels, centers = rng.integers(0, 5, 300), rng.normal(size=(5, 32))

    def view(name, noise):
        return synthetic((centers[labels] + rng.normal(scale=noise, size=(300, 32))).astype(np.float32), labels, name)

    a, b = view("a", 3.0), view("b", 3.0)
    noise = synthetic(rng.normal(size=(300, 32)).astype(np.float32), labels, "noise")
    head, history = search.train_head(a[0], a[1], epochs=HEAD["best_epoch"])
    single = {"kind": "frozen", "members": [("a", None, head)], "val_accuracy": history[-1], "params": a[0],
              "data": a[1], "train_accuracy": 1.0, "train_loss": 0.0, "steps": 1}

    summary, heads = {"did": []}, {"a": head}
    chosen = automl_run._frozen_ensemble([a, b], single, heads, summary)
    figures = summary["frozen_ensemble"]
    assert figures["cv_accuracy"] > figures["cv_accuracy_single"] + 0.02, figures
    assert chosen["kind"] == "frozen ensemble" and [m[0] for m in chosen["members"]] == ["a", "b"]
    # The single's exported head is reused; b's validated head (in heads) is exported refit on every train row.
    assert chosen["members"][0][2] is head and "b" in heads and chosen["members"][1][2] is not heads["b"]
    assert chosen["val_accuracy"] == figures["val_accuracy"] and chosen["params"] == [a[0], b[0]]
    summary = {"did": []}  # fine-tuning follows: reported, not cross-validated, not chosen
    assert automl_run._frozen_ensemble([a, b], single, heads, summary, cross_validate=False) is single
    assert summary["frozen_ensemble"] == {k: figures[k] for k in ("members", "val_accuracy", "eval_accuracy")}

    summary = {"did": []}
    assert automl_run._frozen_ensemble([a, noise], single, {"a": head}, summary) is single
    figures = summary["frozen_ensemble"]
    assert figures["cv_accuracy"] < figures["cv_accuracy_single"], figures
    with pytest.raises(ValueError, match="train rows differ"):
        automl_run._frozen_ensemble([a, synthetic(b[1]["fit"][1][:100], labels[:100], "c")], single, {}, {"did": []})

    # Out-of-fold scores already computed (the label audit's) stand in for those of the same parameters only.
    targets = np.concatenate([a[1]["fit"][2], a[1]["val"][2]])
    known = (np.roll(targets, 1, axis=1), targets)  # every row wrong
    summary = {"did": []}
    automl_run._frozen_ensemble([a, b], single, heads, summary, known_oof=(a[0], known))
    assert summary["frozen_ensemble"]["cv_accuracy_single"] == 0.0
    summary = {"did": []}
    automl_run._frozen_ensemble([a, b], single, heads, summary, known_oof=(dict(a[0], other=1), known))
    assert summary["frozen_ensemble"]["cv_accuracy_single"] > 0.5


def test_backbones_take_turns_in_the_search_and_a_resumed_search_continues_the_turns(tmp_path):
    """A backbone of pure noise loses every trial to an informative one and still gets every other
    trial (left to choose, TPE ran 27 of 30 trials on one backbone), pruned only against its own;
    trials.csv lists only trials that ran, not one still queued."""
    from flowers.automl import search

    rng = np.random.default_rng(2)
    labels, centers = rng.integers(0, 5, 200), rng.normal(size=(5, 16))
    good = synthetic((centers[labels] + rng.normal(scale=0.5, size=(200, 16))).astype(np.float32), labels, "good")
    noise = synthetic(rng.normal(size=(200, 16)).astype(np.float32), labels, "noise")
    datasets, path = {"good": good[1], "noise": noise[1]}, str(tmp_path / "study.sqlite3")
    search.search(search.open_study(path, resume=False), datasets, 6, time.time() + 600, log=lambda _: None)
    study = search.open_study(path, resume=True)
    best = search.search(study, datasets, 9, time.time() + 600, log=lambda _: None)
    assert [t.params["backbone"] for t in study.get_trials()] == ["good", "noise"] * 4 + ["good"]
    assert best.params["backbone"] == "good" and search.finished(study) == 9
    noise_done = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                  if t.params["backbone"] == "noise"]
    assert len(noise_done) >= 3  # pruned against its own trials only, not against the good backbone's
    study.enqueue_trial({"backbone": "noise"})  # queued, never run
    search.write_trials_csv(study, str(tmp_path / "trials.csv"))
    with open(tmp_path / "trials.csv") as f:
        assert [int(r["number"]) for r in csv.DictReader(f)] == list(range(9))


def test_katib_trial_prints_the_metrics_katib_collects(run):
    emb = run["out"] / "embeddings" / BACKBONE
    proc = subprocess.run(
        [sys.executable, "-m", "flowers.automl.trial", f"--train_records={emb / 'train'}",
         f"--eval_records={emb / 'eval'}", "--learning_rate=0.001", "--weight_decay=0.0001", "--dropout=0.2",
         "--label_smoothing=0.1", "--hidden_units=256", "--batch_size=32", "--epochs=3"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {}
    for line in proc.stdout.splitlines():
        for name, value, *_ in re.findall(KATIB_STDOUT_FILTER, line):
            found.setdefault(name, []).append(float(value))
    assert len(found[space.OBJECTIVE]) == 3 + 1  # one per epoch, then the best
    assert found[space.OBJECTIVE][-1] == max(found[space.OBJECTIVE][:-1])
    assert 0 <= found["eval_accuracy"][0] <= 1


# --- Katib Experiment ------------------------------------------------------------------

# Katib's experiment CRD has no schema (x-kubernetes-preserve-unknown-fields), so the check is
# structural: the v1beta1 API's field names (pkg/apis/v1beta1/swagger.json; distribution: v0.17+).
KATIB_FIELDS = {
    "spec": {"algorithm", "earlyStopping", "maxFailedTrialCount", "maxTrialCount", "metricsCollectorSpec",
             "nasConfig", "objective", "parallelTrialCount", "parameters", "resumePolicy", "trialTemplate"},
    "objective": {"additionalMetricNames", "goal", "metricStrategies", "objectiveMetricName", "type"},
    "algorithm": {"algorithmName", "algorithmSettings"},
    "earlyStopping": {"algorithmName", "algorithmSettings"},
    "parameter": {"feasibleSpace", "name", "parameterType"},
    "feasibleSpace": {"list", "max", "min", "step", "distribution"},
    "trialTemplate": {"configMap", "failureCondition", "primaryContainerName", "primaryPodLabels", "retain",
                      "successCondition", "trialParameters", "trialSpec"},
    "trialParameter": {"description", "name", "reference"},
    "metricsCollectorSpec": {"collector", "source"},
}


@pytest.fixture(scope="module")
def experiment():
    return yaml.safe_load((ROOT / "k8s" / "katib" / "experiment.yaml").read_text())


def test_katib_manifest_is_generated_from_the_search_space(experiment):
    assert experiment == katib.experiment()  # regenerate: python -m flowers.automl.katib
    params = {p["name"]: p for p in experiment["spec"]["parameters"]}
    assert list(params) == [name for name, *_ in space.PARAMETERS]
    for name, kind, low, high, log in space.PARAMETERS:
        feasible = params[name]["feasibleSpace"]
        if kind == "categorical":
            assert feasible["list"] == [str(v) for v in high]
        else:
            assert (float(feasible["min"]), float(feasible["max"])) == (low, high)
            assert feasible["distribution"] == ("logUniform" if log else "uniform")


def test_katib_experiment_is_structurally_valid(experiment):
    assert (experiment["apiVersion"], experiment["kind"]) == ("kubeflow.org/v1beta1", "Experiment")
    spec = experiment["spec"]
    assert set(spec) <= KATIB_FIELDS["spec"]
    for key in ("objective", "algorithm", "earlyStopping", "trialTemplate", "metricsCollectorSpec"):
        assert set(spec[key]) <= KATIB_FIELDS[key], key
    for p in spec["parameters"]:
        assert set(p) <= KATIB_FIELDS["parameter"] and set(p["feasibleSpace"]) <= KATIB_FIELDS["feasibleSpace"]
        assert p["parameterType"] in ("double", "int", "discrete", "categorical")
        assert all(isinstance(v, str) for v in p["feasibleSpace"].get("list", []))
    assert spec["objective"]["type"] == "maximize" and spec["objective"]["objectiveMetricName"] == "accuracy"
    assert spec["algorithm"]["algorithmName"] == "tpe" and spec["metricsCollectorSpec"]["collector"]["kind"] == "StdOut"

    template = spec["trialTemplate"]
    names = {p["name"] for p in spec["parameters"]}
    assert all(set(t) <= KATIB_FIELDS["trialParameter"] for t in template["trialParameters"])
    assert {t["reference"] for t in template["trialParameters"]} == names
    job = template["trialSpec"]
    kubernetes_validate.validate(job, "1.32.0", strict=True)  # the trial's Job, against Kubernetes' schema
    pod = job["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == template["primaryContainerName"]]
    used = set(re.findall(r"\$\{trialParameters\.(\w+)\}", " ".join(container["args"])))
    assert used == {t["name"] for t in template["trialParameters"]}
    assert container["command"] == ["python", "-m", "flowers.automl.trial"]
    assert re.search(r"/train:[^/]+-gpu$", container["image"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {katib.GPU_NODE_LABEL: katib.GPU_TYPE}


def test_katib_optimal_trial_is_read_back_typed():
    status = {"currentOptimalTrial": {"parameterAssignments": [
        {"name": "learning_rate", "value": "0.002"}, {"name": "hidden_units", "value": "512"},
        {"name": "batch_size", "value": "64"}, {"name": "dropout", "value": "0.25"}]}}
    assert katib.best_params(status) == {"learning_rate": 0.002, "hidden_units": 512, "batch_size": 64,
                                         "dropout": 0.25}


# --- The compiled AutoML pipeline --------------------------------------------------------

def compile_automl(tmp_path, *flags):
    out = tmp_path / "automl.yaml"
    subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "compile", "--automl", "--output", str(out), *flags],
                   check=True, capture_output=True)
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def test_automl_pipeline_search_step_writes_its_study_and_label_audit(run, tmp_path):
    """The pipeline's search component, called as its container calls it (Optuna backend), on the run's records."""
    from kfp import dsl

    from flowers.pipeline import automl as automl_pipeline

    records = {}
    for split in ("train", "eval"):
        folder = tmp_path / split
        folder.mkdir()
        for f in (run["out"] / "embeddings" / BACKBONE).glob(f"{split}[-.]*"):
            os.symlink(f, folder / f.name.replace(split, "part", 1))
        records[split] = dsl.Dataset(uri=str(folder))
    study = dsl.Artifact(uri=str(tmp_path / "study"))
    params = json.loads(automl_pipeline.search.python_func(
        train_records=records["train"], eval_records=records["eval"], trials=2, search_minutes=10,
        backend="optuna", study=study))
    assert params["backbone"] == BACKBONE and {name for name, *_ in space.PARAMETERS} <= set(params)
    with open(tmp_path / "study" / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    with open(tmp_path / "study" / "label_issues.csv") as f:
        listed = list(csv.DictReader(f))
    assert study.metadata["label_issues"] == len(listed) and study.metadata["backend"] == "optuna"
    assert all(r["predicted"] != r["label"] for r in listed)


def test_automl_pipeline_fine_tunes_on_a_gpu_and_deploys_through_the_gate(tmp_path):
    spec, platform = compile_automl(tmp_path, "--gpu-type", "nvidia-l4")
    assert spec["pipelineInfo"]["name"] == "flowers-automl"
    tune = spec["deploymentSpec"]["executors"]["exec-fine-tune"]["container"]
    assert tune["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-fine-tune"]
    assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    images_ = {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}
    assert images_["exec-search"].endswith("/train:0.1.0") and images_["exec-preprocess"].endswith("/preprocess:0.1.0")
    comps = spec["components"]
    assert comps["comp-fine-tune"]["outputDefinitions"]["artifacts"]["model"]["artifactType"][
        "schemaTitle"] == "system.Model"
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["fine-tune"]["inputs"]["parameters"]["params"]["taskOutputParameter"]["producerTask"] == "search"
    assert tasks["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "fine-tune"
    # The same gate as the main pipeline: deploy sits in a dsl.If on the evaluate step's single output.
    (branch,) = [t for t in tasks.values() if t.get("triggerPolicy")]
    assert branch["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--evaluate-Output'] == 'deploy'"
    inner = comps[branch["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["deploy"] and inner["deploy"]["cachingOptions"].get("enableCache", False) is False

    spec, platform = compile_automl(tmp_path, "--no-gpu")
    assert "resources" not in spec["deploymentSpec"]["executors"]["exec-fine-tune"]["container"]
    assert "exec-fine-tune" not in json.dumps(platform)
