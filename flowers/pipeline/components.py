"""The Kubeflow pipeline's steps as lightweight Python components.

Each runs in its step's image (flowers.core.containers), or in this Python under
kfp.local.SubprocessRunner. Bodies import inside themselves (kfp ships only the
function's source) and stay thin: the work is in the flowers package. A records Dataset holds
PREFIX=<path>/part: part-*.tfrecord.gz + part.metadata.json.
"""
from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from flowers.core import containers


@dsl.component(base_image=containers.image("preprocess"), install_kfp_package=False)
def import_data(data_dir: str, train_csv: str, eval_csv: str, dict_path: str, eval_fraction: float, seed: int,
                dataset: Output[Dataset]):
    """A folder-per-class tree (data_dir) or given CSVs + dict -> train_set.csv, eval_set.csv, dict.txt."""
    from flowers.core import storage
    from flowers.data import importer, rows as csv_rows

    if not data_dir and not (train_csv and eval_csv and dict_path):
        raise ValueError("no data: give data_dir, or all of train_csv, eval_csv and dict_path")
    if data_dir:
        labels, n_train, n_eval = importer.import_tree(data_dir, dataset.path, eval_fraction, seed)
    else:  # copy the given files with resolved uris; bad rows are left for preprocess to report
        labels = csv_rows.read_dict(dict_path)
        storage.write_text(storage.join(dataset.path, "dict.txt"), "".join(f"{x}\n" for x in labels))
        counts = []
        for src, name in ((train_csv, "train_set.csv"), (eval_csv, "eval_set.csv")):
            rows, rejected = csv_rows.read_rows(src)
            for line, text, e in rejected:
                print(f"{src} line {line}: {e.reason}: {e}")
            csv_rows.write_rows(storage.join(dataset.path, name), [(r.uri, *r.labels) for r in rows])
            counts.append(len(rows))
        n_train, n_eval = counts
    dataset.metadata.update({"labels": labels, "train_rows": n_train, "eval_rows": n_eval})


@dsl.component(base_image=containers.image("preprocess"), install_kfp_package=False)
def preprocess(dataset: Input[Dataset], backbone: str, beam_args: str,
               train_records: Output[Dataset], eval_records: Output[Dataset]):
    """Both CSVs -> embedding TFRecords in one Beam run (DirectRunner, or Dataflow through beam_args)."""
    import shlex

    from flowers.core import records, storage
    from flowers.preprocess import pipeline as preprocess

    train_prefix, eval_prefix = (storage.join(a.path, "part") for a in (train_records, eval_records))
    preprocess.run([
        "--input_path", f"{storage.join(dataset.path, 'train_set.csv')},{storage.join(dataset.path, 'eval_set.csv')}",
        "--input_dict", storage.join(dataset.path, "dict.txt"),
        "--output_path", f"{train_prefix},{eval_prefix}",
        "--backbone", backbone, *shlex.split(beam_args)])
    for artifact, prefix in ((train_records, train_prefix), (eval_records, eval_prefix)):
        meta = records.read_metadata(prefix)
        artifact.metadata.update({"backbone": meta["backbone"], "written": meta["counts"]["written"],
                                  "rejected": sum(meta["counts"]["rejected"].values())})


@dsl.component(base_image=containers.image("train"), install_kfp_package=False)
def train(train_records: Input[Dataset], eval_records: Input[Dataset], max_steps: int, batch_size: int,
          learning_rate: float, dropout: float, hidden_units: int, model: Output[Model]):
    """The head on the embeddings; exports the servable model under <model>/model/<version>/."""
    from flowers.core import records, storage
    from flowers.train import trainer

    result = trainer.train(
        train_data_paths=records.shard_pattern(storage.join(train_records.path, "part")),
        eval_data_paths=records.shard_pattern(storage.join(eval_records.path, "part")),
        output_path=model.path, max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
        dropout=dropout, hidden_units=hidden_units)
    model.metadata.update({"export_path": result["export_path"], "accuracy": result["metrics"]["accuracy"]})


@dsl.component(base_image=containers.image("train"), install_kfp_package=False)
def evaluate(model: Input[Model], accuracy_threshold: float, model_base_path: str, model_config_file: str,
             model_name: str, metrics: Output[Metrics], confusion: Output[ClassificationMetrics],
             gate_report: Output[Markdown], report: Output[HTML]) -> str:
    """Eval metrics (per class too) and the report into the KFP UI, and the deploy gate: returns "deploy" or "skip" (one output,
    so that dsl.If can branch on it, under kfp.local too); the reason goes to the log and gate_report."""
    import json

    from flowers.core import storage
    from flowers.deploy import gate
    from flowers.train import report as evaluation_report

    m = json.loads(storage.read_text(storage.join(model.path, "metrics.json")))
    for key in ("accuracy", "loss", "train_accuracy", "train_loss", "steps"):
        metrics.log_metric(key, float(m[key]))
    cm = m["confusion_matrix"]
    confusion.log_confusion_matrix(cm["labels"], cm["matrix"])
    evaluation_report.log_to_kfp(model.path, metrics, report)
    ok, reason = gate.check(m["accuracy"], accuracy_threshold, model_config_file, model_base_path,
                            model_name)  # always against stable, whichever label deploy moves
    decision = "deploy" if ok else "skip"
    print(f"gate: {decision}: {reason}")
    storage.write_text(gate_report.path, f"## Deploy gate: {decision}\n\n{reason}\n")
    gate_report.metadata.update({"decision": decision, "reason": reason})
    return decision


@dsl.component(base_image=containers.image("train"), install_kfp_package=False)
def deploy(model: Input[Model], model_base_path: str, model_config_file: str, model_name: str,
           label: str) -> int:
    """Copy the export to the serving base path as the next version and point `label` at it
    (the pipeline runs this step only when the gate said "deploy"); returns the version."""
    from flowers.core import storage
    from flowers.deploy import publish

    version = publish.deploy(storage.join(model.path, "model"), model_base_path, model_name=model_name,
                             label=label, config_path=model_config_file)
    print(f"deployed version {version} as {label}")
    return version
