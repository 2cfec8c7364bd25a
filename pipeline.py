"""The flowers Kubeflow pipeline: import data -> preprocess -> train -> evaluate (gate) -> deploy.

    python pipeline.py compile [--output pipeline.yaml] [--no-gpu] [--automl]
    python pipeline.py run --local [--data DIR]
    python pipeline.py submit --host URL --param model_base_path=gs://... --param model_config_file=...
        --param data_dir=gs://... [--param NAME=VALUE ...] [--experiment NAME] [--run-name NAME]
"""
import argparse
import logging
import os
import pathlib
import re
import sys
import warnings

from kfp import dsl

from flowers.core import defaults
from flowers.pipeline import components, wiring

ROOT = pathlib.Path(__file__).resolve().parent
DEFAULT_GPU = os.environ.get("FLOWERS_GPU_TYPE", "nvidia-tesla-t4")
CSV_PARAMS = ("train_csv", "eval_csv", "dict_path")
ANSI_COLOR = r"\x1b\[[0-9;]*m"  # kfp.local colours its messages


class UsageError(Exception):
    """A bad command line or pipeline argument: reported in one line, before anything runs."""


def build_pipeline(use_gpu=True, gpu_type=DEFAULT_GPU, gpu_count=1):
    """The pipeline function; GPU placement of the train step is fixed when compiling."""

    @dsl.pipeline(name="flowers", description="Transfer learning on flower photos, served by TF Serving")
    def flowers_pipeline(
        model_base_path: str,
        model_config_file: str,
        data_dir: str = "",
        train_csv: str = "",
        eval_csv: str = "",
        dict_path: str = "",
        eval_fraction: float = defaults.EVAL_FRACTION,
        seed: int = defaults.SPLIT_SEED,
        backbone: str = defaults.BACKBONE,
        beam_args: str = "",
        max_steps: int = defaults.MAX_STEPS,
        batch_size: int = defaults.BATCH_SIZE,
        learning_rate: float = defaults.LEARNING_RATE,
        dropout: float = defaults.DROPOUT,
        hidden_units: int = defaults.HIDDEN_UNITS,
        accuracy_threshold: float = defaults.ACCURACY_THRESHOLD,
        model_name: str = defaults.MODEL_NAME,
        label: str = defaults.STABLE,
    ):
        """Transfer learning on flower photos, served by TF Serving.

        Args:
            model_base_path: Required. Where the servable versions go (BASE/<version>/), as the
                pipeline's steps see it, e.g. gs://BUCKET/models/flowers. The gate reads the stable
                version's metrics here.
            model_config_file: Required. TF Serving's models.config: gs://BUCKET/models/models.config
                or configmap://NAMESPACE/NAME (the ConfigMap k8s/ mounts).
            data_dir: A folder-per-class photo tree (local or gs://), split into train and eval CSVs.
                Give this, or all of train_csv, eval_csv and dict_path.
            train_csv: The lab's train CSV (uri,label[,label...]) when data_dir is empty.
            eval_csv: The lab's eval CSV when data_dir is empty.
            dict_path: dict.txt, one label per line, when data_dir is empty.
            eval_fraction: Share of each class held out for eval when splitting data_dir.
            seed: Seed of the train/eval split of data_dir.
            backbone: Image backbone that computes the embeddings (flowers.core.backbones).
            beam_args: Extra Beam flags for preprocess, e.g. "--runner DataflowRunner --project P".
            max_steps: Training steps of the head.
            batch_size: Training batch size.
            learning_rate: Adam learning rate.
            dropout: Dropout rate before the head's output layer.
            hidden_units: Units of the head's hidden layer.
            accuracy_threshold: Least eval accuracy a model needs to be deployed (it must also be no
                worse than the version the stable label serves now).
            model_name: The served model's name in models.config.
            label: The version label the deployed model gets (stable, or canary for a trial).
        """
        pre = wiring.import_and_preprocess(data_dir, train_csv, eval_csv, dict_path, eval_fraction, seed, backbone,
                                           beam_args)
        trained = components.train(train_records=pre.outputs["train_records"],
                                   eval_records=pre.outputs["eval_records"], max_steps=max_steps,
                                   batch_size=batch_size, learning_rate=learning_rate, dropout=dropout,
                                   hidden_units=hidden_units)
        trained.set_display_name("Train head")
        if use_gpu:
            wiring.on_gpu(trained, gpu_type, gpu_count)
        wiring.gate_and_deploy(trained.outputs["model"], accuracy_threshold, model_base_path, model_config_file,
                               model_name, label)

    return flowers_pipeline


def compile_pipeline(output, use_gpu=True, gpu_type=DEFAULT_GPU, automl=False):
    from kfp import compiler

    from flowers.pipeline import automl as automl_pipeline

    builder = automl_pipeline.build_pipeline if automl else build_pipeline
    compiler.Compiler().compile(builder(use_gpu, gpu_type), str(output))
    return output


_CASTS = {"STRING": str, "INTEGER": int, "FLOAT": float,
          "BOOLEAN": lambda v: {"true": True, "false": False}[v.lower()]}


def pipeline_arguments(pairs):
    """--param NAME=VALUE pairs -> typed pipeline arguments, checked against the pipeline's
    parameters before anything is submitted: a bad pair, an unknown name, a missing required
    parameter or no data source is a UsageError."""
    inputs = build_pipeline(use_gpu=False).component_spec.inputs
    arguments = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--param {pair!r}: expected NAME=VALUE")
        if name not in inputs:
            raise UsageError(f"--param {name}: no such pipeline parameter (have: {', '.join(inputs)})")
        kind = inputs[name].type.upper()
        try:
            arguments[name] = _CASTS.get(kind, str)(value)
        except (KeyError, ValueError):
            raise UsageError(f"--param {name}={value}: expected {kind.lower()}") from None
    missing = [n for n, spec in inputs.items() if not spec.optional and not arguments.get(n)]
    if missing:
        raise UsageError(f"missing required pipeline parameter(s): {', '.join(missing)} (--param NAME=VALUE)")
    if not arguments.get("data_dir") and not all(arguments.get(n) for n in CSV_PARAMS):
        raise UsageError("no data: give --param data_dir=DIR, or all of " +
                         ", ".join(f"--param {n}=..." for n in CSV_PARAMS))
    return arguments


def run_local(data_dir, workdir, enable_caching=True, **params):
    """The whole pipeline on this machine through kfp.local. Cached steps (import, preprocess,
    train) are reused when their inputs are unchanged; evaluate and deploy always run."""
    from kfp import local

    if not os.path.isdir(data_dir):
        raise UsageError(f"--data {data_dir}: not a folder (expected a folder of photos per class)")
    from flowers.data import importer

    try:  # what the import step will do, before any step runs
        importer.scan_tree(str(data_dir))
    except (ValueError, OSError) as e:
        raise UsageError(f"--data {e}") from None
    workdir = pathlib.Path(workdir).resolve()
    serving = workdir / "serving"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "pipeline_root"),
               enable_caching=enable_caching)
    warnings.filterwarnings("ignore", message="You may be attemping to run a task")
    params = {"model_base_path": str(serving / "flowers"), "model_config_file": str(serving / "models.config"),
              **params}
    task = build_pipeline(use_gpu=False)(data_dir=str(data_dir), **params)
    return task, params


def submit(host, arguments, use_gpu=True, experiment="flowers", run_name=None, enable_caching=None):
    """Submit a run to a Kubeflow Pipelines endpoint; returns the run's URL."""
    import kfp
    import kfp_server_api
    import urllib3

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kfp's notice about KFP server versions
            logging.disable(logging.ERROR)  # kfp logs each failed health check with a traceback
            try:
                client = kfp.Client(host=host)
            finally:
                logging.disable(logging.NOTSET)
        result = client.create_run_from_pipeline_func(
            build_pipeline(use_gpu=use_gpu), arguments=arguments, run_name=run_name,
            experiment_name=experiment, enable_caching=enable_caching)
    except urllib3.exceptions.MaxRetryError as e:
        raise UsageError(f"cannot reach Kubeflow Pipelines at {host}: {e.reason}") from None
    except (urllib3.exceptions.HTTPError, kfp_server_api.ApiException, TimeoutError, OSError) as e:
        reason = f"{e.status} {e.reason}" if isinstance(e, kfp_server_api.ApiException) else e
        raise UsageError(f"cannot submit to Kubeflow Pipelines at {host}: {reason}") from None
    return result.run_id, f"{host.rstrip('/')}/#/runs/details/{result.run_id}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="write the pipeline YAML")
    c.add_argument("--output", default="pipeline.yaml")
    c.add_argument("--no-gpu", action="store_true", help="train on CPU nodes")
    c.add_argument("--gpu-type", default=DEFAULT_GPU, help=f"value of the {wiring.GPU_NODE_LABEL} node label")
    c.add_argument("--automl", action="store_true", help="the AutoML variant (flowers.pipeline.automl)")
    r = sub.add_parser("run", help="run the pipeline")
    r.add_argument("--local", action="store_true", required=True, help="on this machine (kfp.local)")
    r.add_argument("--data", default=str(ROOT / "data" / "sample"), help="folder-per-class photo tree")
    r.add_argument("--workdir", default=str(ROOT / "demo-output"))
    r.add_argument("--backbone", default=defaults.BACKBONE)
    r.add_argument("--max_steps", type=int, default=defaults.MAX_STEPS)
    r.add_argument("--eval_fraction", type=float, default=defaults.EVAL_FRACTION)
    r.add_argument("--accuracy_threshold", type=float, default=defaults.ACCURACY_THRESHOLD)
    r.add_argument("--no-cache", action="store_true", help="re-run every step, preprocessing included")
    s = sub.add_parser("submit", help="submit a run to a Kubeflow Pipelines endpoint")
    s.add_argument("--host", required=True, help="the KFP endpoint, e.g. https://....pipelines.googleusercontent.com")
    s.add_argument("--experiment", default="flowers")
    s.add_argument("--run-name")
    s.add_argument("--no-gpu", action="store_true")
    s.add_argument("--no-cache", action="store_true", help="re-run every step, preprocessing included")
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a pipeline parameter (model_base_path, model_config_file and a data source are required)")
    args = parser.parse_args(argv)

    try:
        if args.command == "compile":
            compile_pipeline(args.output, use_gpu=not args.no_gpu, gpu_type=args.gpu_type,
                             automl=args.automl)
            print(f"wrote {args.output}")
        elif args.command == "run":
            try:
                _, params = run_local(args.data, args.workdir, backbone=args.backbone, max_steps=args.max_steps,
                                      eval_fraction=args.eval_fraction, accuracy_threshold=args.accuracy_threshold,
                                      enable_caching=not args.no_cache)
            except RuntimeError as e:  # kfp.local: a step failed; its log is above
                raise UsageError(f"the local run failed: {re.sub(ANSI_COLOR, '', str(e))}") from None
            print(f"\nmodel versions: {params['model_base_path']}\nmodels.config: {params['model_config_file']}\n"
                  f"serve it:  flowers serve --model_config_file {params['model_config_file']} "
                  "--port 8500 --rest_api_port 8501")
        else:
            run_id, url = submit(args.host, pipeline_arguments(args.param), use_gpu=not args.no_gpu,
                                 experiment=args.experiment, run_name=args.run_name,
                                 enable_caching=False if args.no_cache else None)
            print(f"submitted run {run_id}: {url}")
    except UsageError as e:
        print(f"pipeline.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
