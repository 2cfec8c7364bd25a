"""The head's hyper-parameter search on cached embeddings, with Optuna (TPE, median pruning).

The study lives in a SQLite file, so a killed search resumes where it stopped: finished and
pruned trials are kept, a trial killed mid-way is marked failed (heartbeat) and retried once.
Trials are selected on a stratified validation slice of the TRAIN rows; the eval set is only
reported (trials.csv `eval_accuracy`), never used to choose, so the figures stay honest.
"""
import time
import warnings

import keras
import numpy as np
import optuna
import tensorflow as tf

from flowers.automl import space
from flowers.core import records, storage
from flowers.data import importer, rows as rows_lib
from flowers.train import head as head_lib, inputs

STUDY_NAME = "flowers-automl"
HEARTBEAT_S, GRACE_S = 5, 10  # a trial without a heartbeat for GRACE_S is stale (its run was killed)
TRIAL_COLUMNS = ("number", "state", "value", "eval_accuracy", "best_epoch", "duration_s")
REFIT_HEADS = 5  # averaged in the exported frozen head (refit_head)


class SearchError(ValueError):
    """A study that cannot be started or resumed as asked."""


def load_split(prefix):
    """PREFIX's records -> (uris, embeddings [N, D], targets [N, C], metadata)."""
    files, meta = inputs.read_inputs(records.shard_pattern(prefix), prefix)
    n_labels, size = len(meta["labels"]), meta["embedding_size"]
    uris, xs, ys = [], [], []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024):
        parsed = records.parse(batch, size)
        x, y = parsed["embedding"], inputs.soft_targets(parsed["label"], n_labels)
        uris += [u.decode() for u in parsed["image_uri"].numpy()]
        xs.append(x.numpy())
        ys.append(y.numpy())
    # Beam writes records in no fixed order: sorted by URI, the validation slice taken below is
    # the same rows for every backbone and every run, so their accuracies compare.
    order = np.argsort(uris, kind="stable")
    return [uris[i] for i in order], np.concatenate(xs)[order], np.concatenate(ys)[order], meta


def load_embeddings(train_prefix, eval_prefix):
    """{"fit", "val", "eval"}: each (uris, x, y), plus labels; val is a stratified slice of train."""
    uris, x, y, meta = load_split(train_prefix)
    by_class = {}
    for i, label in enumerate(y.argmax(axis=1)):
        by_class.setdefault(int(label), []).append(i)
    fit, val = importer.stratified_split(by_class, space.VALIDATION_FRACTION, space.SEED)
    fit, val = np.array(sorted(i for i, _ in fit)), np.array(sorted(i for i, _ in val))
    e_uris, ex, ey, e_meta = load_split(eval_prefix)
    inputs.check_metadata(meta, e_meta)
    take = lambda idx: ([uris[i] for i in idx], x[idx], y[idx])  # noqa: E731
    return {"fit": take(fit), "val": take(val), "eval": (e_uris, ex, ey), "labels": meta["labels"],
            "backbone": meta["backbone"], "embedding_size": meta["embedding_size"]}


def accuracy(scores, targets):
    """A row is right when its argmax is one of its labels (as flowers.train.metrics)."""
    return float((targets[np.arange(len(targets)), scores.argmax(axis=1)] > 0).mean()) if len(targets) else 0.0


def compile_head(head, params):
    head.compile(optimizer=keras.optimizers.AdamW(params["learning_rate"], weight_decay=params["weight_decay"]),
                 loss=keras.losses.CategoricalCrossentropy(label_smoothing=params["label_smoothing"]),
                 metrics=["categorical_accuracy"], steps_per_execution=8)


class _ReportAccuracy(keras.callbacks.Callback):
    """Validation accuracy per epoch (computed inside fit) to Optuna, which may prune the trial."""

    def __init__(self, trial=None):
        super().__init__()
        self.trial, self.history = trial, []

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(float(logs["val_categorical_accuracy"]))
        if self.trial is not None:
            self.trial.report(self.history[-1], epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned()


def train_head(params, data, epochs=space.EPOCHS, trial=None, seed=space.SEED):
    """A fresh head trained on data["fit"] -> (head, val accuracy per epoch)."""
    keras.utils.set_random_seed(seed)
    _, x, y = data["fit"]
    head = head_lib.build_head(data["embedding_size"], len(data["labels"]), params["hidden_units"],
                              params["dropout"])
    compile_head(head, params)
    report = _ReportAccuracy(trial)
    head.fit(x, y, batch_size=params["batch_size"], epochs=epochs, verbose=0, callbacks=[report], shuffle=True,
             validation_data=data["val"][1:], validation_batch_size=1024)
    return head, report.history


def best_epochs(params):
    """The epochs a head is retrained for: the trial's best (run._with_epochs), else the search's maximum."""
    return params.get("best_epoch", space.EPOCHS)


def train_rows(data):
    """Every train row, fit then val: (uris, x, y)."""
    return (data["fit"][0] + data["val"][0], *(np.concatenate([data["fit"][i], data["val"][i]]) for i in (1, 2)))


def refit_head(params, data):
    """The exported frozen head: once the validation slice has chosen the parameters and epochs, REFIT_HEADS
    fresh heads (initial seeds 0, 1, ...) trained on every train row, the slice included (as
    scikit-learn's refit), averaged into one Keras model (their mean scores). Over eight unseen splits,
    against one head on the fit rows: refit alone held out 13 photos more of 2,632, refit and averaged
    five 39 more (docs/ACCURACY.md); the initial seed alone moved one head by up to 10 photos."""
    every_row = dict(data, fit=train_rows(data))
    members = [train_head(params, every_row, best_epochs(params), seed=seed)[0] for seed in range(REFIT_HEADS)]
    inputs = keras.Input((data["embedding_size"],), name="embedding")
    for i, member in enumerate(members):
        member.name = f"head_{i}"  # a model's layers need unique names
    return keras.Model(inputs, keras.layers.Average(name="scores")([m(inputs) for m in members]), name="head")


def stratified_folds(targets, folds, seed=space.SEED):
    """Each row's fold (0..folds-1), every class spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    labels, fold = targets.argmax(axis=1), np.empty(len(targets), int)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold[rows] = np.arange(len(rows)) % folds
    return fold


def out_of_fold_scores(params, data, folds):
    """(scores, targets) for every train row (fit + val), each scored by a head that did not train
    on it: one head per fold, trained on the other folds for params' best number of epochs."""
    _, x, y = train_rows(data)
    fold, scores = stratified_folds(y, folds), np.zeros(y.shape, np.float32)
    for k in range(folds):
        held = fold == k
        part = dict(data, fit=(None, x[~held], y[~held]), val=(None, x[held], y[held]))
        head, _ = train_head(params, part, epochs=best_epochs(params))
        scores[held] = head.predict(x[held], verbose=0, batch_size=1024)
    return scores, y


def open_study(path, resume):
    """The study in PATH (SQLite); an existing one is reused only with resume."""
    if storage.exists(path) and not resume:
        raise SearchError(f"{path} holds a study already: pass --resume, or choose another --output")
    if storage.is_remote(path):
        raise SearchError(f"{path}: the study is a SQLite file and needs a local --output")
    storage.makedirs(storage.dirname(path))
    url = f"sqlite:///{path}"
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat options
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    rdb = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                     heartbeat_stale_trial_callback=retry)
    return optuna.create_study(
        study_name=STUDY_NAME, storage=rdb, load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=space.SEED, n_startup_trials=5),
        pruner=PerBackbone(optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=5)))


class PerBackbone(optuna.pruners.BasePruner):
    """A pruner that sees only the trials of the same backbone: backbones differ by a point or more
    on a split, so against every backbone's median the one behind lost nearly all its trials (14 of 15)."""

    def __init__(self, pruner):
        self.pruner = pruner

    def prune(self, study, trial):
        return self.pruner.prune(_SameBackbone(study, trial.params.get("backbone")), trial)


class _SameBackbone:
    """The study, as far as a pruner reads it (get_trials, direction), holding one backbone's trials."""

    def __init__(self, study, backbone):
        self.study, self.backbone, self.direction = study, backbone, study.direction

    def get_trials(self, deepcopy=True, states=None):
        return [t for t in self.study.get_trials(deepcopy=deepcopy, states=states)
                if t.params.get("backbone") == self.backbone]


def finished(study):
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def search(study, datasets, n_trials, deadline, log=print):
    """Run trials until the study holds n_trials finished ones or the deadline passes.

    datasets: {backbone: load_embeddings(...)}. Returns the study's best trial (or None)."""

    def objective(trial):
        params = space.suggest(trial, datasets)
        data = datasets[params["backbone"]]
        head, history = train_head(params, data, trial=trial)
        best_epoch = int(np.argmax(history))
        eval_acc = accuracy(head.predict(data["eval"][1], verbose=0, batch_size=1024), data["eval"][2])
        trial.set_user_attr("best_epoch", best_epoch + 1)
        trial.set_user_attr("eval_accuracy", eval_acc)
        log(f"trial {trial.number}: val accuracy {history[best_epoch]:.4f} (epoch {best_epoch + 1}), "
            f"eval accuracy {eval_acc:.4f}, {params}")
        return history[best_epoch]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    while finished(study) < n_trials and time.time() < deadline:
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):  # else: a retry
            study.enqueue_trial({"backbone": next_backbone(study, list(datasets))})
        study.optimize(objective, n_trials=1)
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None


def next_backbone(study, backbones):
    """Backbones take turns, by trial number (a resumed study continues the rotation); the sampler
    picks the rest. Each backbone is fine-tuned and ensembled from its own best head, so each gets
    an equal share of the search: left to choose, TPE ran 27 of 30 trials on whichever led early."""
    return backbones[len(study.get_trials(deepcopy=False)) % len(backbones)]


def best_per_backbone(study):
    """{backbone: its best completed trial}."""
    best = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        name = t.params["backbone"]
        if name not in best or t.value > best[name].value:
            best[name] = t
    return best


def write_trials_csv(study, path):
    """Every trial that ran (not one only queued): number, state, objective, eval accuracy, epochs,
    seconds, then its parameters."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]
    names = sorted({k for t in trials for k in t.params})
    lines = [list(TRIAL_COLUMNS) + names]
    for t in trials:
        duration = t.duration.total_seconds() if t.duration else ""
        lines.append([t.number, t.state.name, "" if t.value is None else round(t.value, 6),
                      _round(t.user_attrs.get("eval_accuracy")), t.user_attrs.get("best_epoch", ""),
                      _round(duration, 2)] + [t.params.get(k, "") for k in names])
    rows_lib.write_rows(path, lines)


def _round(value, digits=6):
    return round(value, digits) if isinstance(value, float) else ("" if value is None else value)
