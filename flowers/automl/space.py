"""The search space, defined once: Optuna samples it locally, k8s/katib/experiment.yaml is
generated from it (`python -m flowers.automl.katib`). No TensorFlow import here."""

# (name, kind, low, high or choices, log scale). Keys are `flowers.automl.trial` flags.
PARAMETERS = (
    ("learning_rate", "double", 1e-4, 1e-2, True),
    ("weight_decay", "double", 1e-6, 1e-2, True),
    ("dropout", "double", 0.0, 0.6, False),
    ("label_smoothing", "double", 0.0, 0.2, False),
    ("hidden_units", "categorical", None, (256, 512, 1024), False),
    ("batch_size", "categorical", None, (32, 64, 128), False),
)
EPOCHS = 40  # per head trial; the pruner stops hopeless ones early (seconds per trial on embeddings)
OBJECTIVE = "accuracy"  # validation accuracy: a stratified slice of the TRAIN set, never the eval set
VALIDATION_FRACTION = 0.15
SEED = 0


def suggest(trial, backbones):
    """Optuna trial -> params dict (backbone chosen among the preprocessed ones)."""
    params = {"backbone": trial.suggest_categorical("backbone", list(backbones))}
    for name, kind, low, high, log in PARAMETERS:
        if kind == "categorical":
            params[name] = trial.suggest_categorical(name, list(high))
        else:
            params[name] = trial.suggest_float(name, low, high, log=log)
    return params
