"""The AutoML variant of the pipeline (`python pipeline.py compile --automl`):

    import data -> preprocess -> search (Katib on a cluster, Optuna under kfp.local)
    -> fine-tune + export -> evaluate (gate) -> deploy

Import, preprocess, evaluate and deploy are the main pipeline's components, so the winner goes
through the same gate: a search never replaces a better `stable` model.
"""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from flowers.automl.katib import GPU_TYPE
from flowers.core import containers, defaults
from flowers.pipeline import wiring


@dsl.component(base_image=containers.image("train"), install_kfp_package=False)
def search(train_records: Input[Dataset], eval_records: Input[Dataset], trials: int, search_minutes: float,
           backend: str, study: Output[Artifact]) -> str:
    """The head's search: a Katib Experiment when backend is katib (or auto inside a cluster),
    else Optuna in this step (its study and trials.csv in `study`), then the label audit
    (label_issues.csv in `study`). Returns the best parameters (JSON)."""
    import json
    import os
    import time

    from flowers.automl import label_audit, search as automl_search
    from flowers.core import storage

    use_katib = backend == "katib" or (backend == "auto" and "KUBERNETES_SERVICE_HOST" in os.environ)
    train_prefix, eval_prefix = (storage.join(a.path, "part") for a in (train_records, eval_records))
    meta_backbone = json.loads(storage.read_text(f"{train_prefix}.metadata.json"))["backbone"]
    data = automl_search.load_embeddings(train_prefix, eval_prefix)
    os.makedirs(study.path, exist_ok=True)
    if use_katib:
        from flowers.automl import katib

        body = katib.experiment(storage.join(train_records.uri, "part"), storage.join(eval_records.uri, "part"),
                                name=f"flowers-automl-{int(time.time())}", max_trials=trials)
        params, status = katib.run_experiment(body, timeout_s=int(search_minutes * 60))
        storage.write_text(storage.join(study.path, "katib_status.json"), json.dumps(status, indent=2))
    else:
        optuna_study = automl_search.open_study(os.path.join(study.path, "study.sqlite3"), resume=True)
        best = automl_search.search(optuna_study, {meta_backbone: data}, trials, time.time() + search_minutes * 60)
        automl_search.write_trials_csv(optuna_study, storage.join(study.path, "trials.csv"))
        params = dict(best.params, best_epoch=best.user_attrs["best_epoch"])
    params["backbone"] = meta_backbone
    doubted, _ = label_audit.audit(params, data, storage.join(study.path, "label_issues.csv"))
    study.metadata.update({"backend": "katib" if use_katib else "optuna", "label_issues": doubted, **params})
    return json.dumps(params)


@dsl.component(base_image=containers.image("train"), install_kfp_package=False)
def fine_tune(train_records: Input[Dataset], eval_records: Input[Dataset], params: str, trials: int,
              fine_tune_minutes: float, fine_tune_epochs: int, model: Output[Model]):
    """Fine-tune the winner on images (its first head searched here, Optuna, on the features
    fine-tuning reads) and export it under <model>/model/<version>/ with metrics.json and
    eval_predictions.jsonl (what the gate and deploy read)."""
    import json
    import tempfile
    import time

    from flowers.automl import run, search as automl_search
    from flowers.core import storage

    data = automl_search.load_embeddings(storage.join(train_records.path, "part"),
                                         storage.join(eval_records.path, "part"))
    summary = run.finish(json.loads(params), data, model.path, time.time() + fine_tune_minutes * 60,
                         fine_tune=fine_tune_epochs > 0, fine_tune_epochs=fine_tune_epochs or None, trials=trials,
                         study_path=f"{tempfile.mkdtemp()}/{run.FINETUNE_STUDY}")  # SQLite: not on a bucket mount
    model.metadata.update({"export_path": summary["export_path"], "accuracy": summary["eval_accuracy"],
                           "kind": summary["winner"]["kind"]})


def build_pipeline(use_gpu=True, gpu_type=GPU_TYPE, gpu_count=1):
    """The AutoML pipeline function; GPU placement of the fine-tune step is fixed when compiling."""

    @dsl.pipeline(name="flowers-automl", description="AutoML-lite: search the head, fine-tune, gate, deploy")
    def flowers_automl_pipeline(
        data_dir: str = "",
        train_csv: str = "",
        eval_csv: str = "",
        dict_path: str = "",
        eval_fraction: float = 0.1,
        seed: int = 0,
        backbone: str = defaults.BACKBONE,
        beam_args: str = "",
        trials: int = 30,
        search_backend: str = "auto",
        search_minutes: float = 120.0,
        fine_tune_minutes: float = 120.0,
        fine_tune_epochs: int = 12,
        accuracy_threshold: float = 0.9,
        model_base_path: str = "gs://BUCKET/models/flowers",
        model_config_file: str = "gs://BUCKET/models/models.config",
        model_name: str = defaults.MODEL_NAME,
        label: str = defaults.STABLE,
    ):
        pre = wiring.import_and_preprocess(data_dir, train_csv, eval_csv, dict_path, eval_fraction, seed,
                                           backbone, beam_args)
        found = search(train_records=pre.outputs["train_records"], eval_records=pre.outputs["eval_records"],
                       trials=trials, search_minutes=search_minutes, backend=search_backend)
        found.set_display_name("Search (Katib / Optuna)")
        tuned = fine_tune(train_records=pre.outputs["train_records"], eval_records=pre.outputs["eval_records"],
                          params=found.outputs["Output"], trials=trials, fine_tune_minutes=fine_tune_minutes,
                          fine_tune_epochs=fine_tune_epochs)
        tuned.set_display_name("Fine-tune + export")
        if use_gpu:
            wiring.on_gpu(tuned, gpu_type, gpu_count)
        wiring.gate_and_deploy(tuned.outputs["model"], accuracy_threshold, model_base_path, model_config_file,
                               model_name, label)

    return flowers_automl_pipeline
