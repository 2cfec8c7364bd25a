"""The flowers Kubeflow pipeline: import data -> preprocess -> train -> evaluate -> deploy.

    python pipeline.py compile [--output pipeline.yaml] [--no-gpu] [--automl]
    python pipeline.py run --local [--data DIR]
    python pipeline.py submit --host URL [--experiment NAME] [--run-name NAME]
"""
import argparse
import os
import pathlib
import sys
import warnings

from kfp import dsl, kubernetes

from flowers.core import defaults
from flowers.pipeline import components

ROOT = pathlib.Path(__file__).resolve().parent
GPU_NODE_LABEL = "cloud.google.com/gke-accelerator"
DEFAULT_GPU = os.environ.get("FLOWERS_GPU_TYPE", "nvidia-tesla-t4")


def build_pipeline(use_gpu=True, gpu_type=DEFAULT_GPU, gpu_count=1):
    """The pipeline function; GPU placement of the train step is fixed when compiling."""

    @dsl.pipeline(name="flowers", description="Transfer learning on flower photos, served by TF Serving")
    def flowers_pipeline(
        data_dir: str = "",
        train_csv: str = "",
        eval_csv: str = "",
        dict_path: str = "",
        eval_fraction: float = 0.1,
        seed: int = 0,
        backbone: str = defaults.BACKBONE,
        beam_args: str = "",
        max_steps: int = defaults.MAX_STEPS,
        batch_size: int = defaults.BATCH_SIZE,
        learning_rate: float = defaults.LEARNING_RATE,
        dropout: float = defaults.DROPOUT,
        hidden_units: int = defaults.HIDDEN_UNITS,
        accuracy_threshold: float = 0.9,
        model_base_path: str = "gs://BUCKET/models/flowers",
        model_config_file: str = "gs://BUCKET/models/models.config",
        model_name: str = defaults.MODEL_NAME,
        label: str = defaults.STABLE,
    ):
        data = components.import_data(data_dir=data_dir, train_csv=train_csv, eval_csv=eval_csv,
                                      dict_path=dict_path, eval_fraction=eval_fraction, seed=seed)
        data.set_display_name("Import data")
        pre = components.preprocess(dataset=data.outputs["dataset"], backbone=backbone, beam_args=beam_args)
        pre.set_display_name("Preprocess (Beam)").set_caching_options(True)
        trained = components.train(train_records=pre.outputs["train_records"],
                                   eval_records=pre.outputs["eval_records"], max_steps=max_steps,
                                   batch_size=batch_size, learning_rate=learning_rate, dropout=dropout,
                                   hidden_units=hidden_units)
        trained.set_display_name("Train head")
        if use_gpu:
            trained.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu_count)
            kubernetes.add_node_selector(trained, label_key=GPU_NODE_LABEL, label_value=gpu_type)
            kubernetes.add_toleration(trained, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        gate = components.evaluate(model=trained.outputs["model"], accuracy_threshold=accuracy_threshold,
                                   model_config_file=model_config_file, model_name=model_name)
        gate.set_display_name("Evaluate (gate)").set_caching_options(False)
        # The gate runs inside deploy: kfp.local cannot yet resolve a dsl.If on a task output.
        dep = components.deploy(model=trained.outputs["model"], decision=gate.outputs["decision"],
                                reason=gate.outputs["reason"], model_base_path=model_base_path,
                                model_config_file=model_config_file, model_name=model_name, label=label)
        dep.set_display_name("Deploy (if the gate passed)").set_caching_options(False)

    return flowers_pipeline


def compile_pipeline(output, use_gpu=True, gpu_type=DEFAULT_GPU, automl=False):
    from kfp import compiler

    from flowers.pipeline import automl as automl_pipeline

    builder = automl_pipeline.build_pipeline if automl else build_pipeline
    compiler.Compiler().compile(builder(use_gpu, gpu_type), str(output))
    return output


def run_local(data_dir, workdir, enable_caching=True, **params):
    """The whole pipeline on this machine through kfp.local. Cached steps (import, preprocess,
    train) are reused when their inputs are unchanged; evaluate and deploy always run."""
    from kfp import local

    workdir = pathlib.Path(workdir).resolve()
    serving = workdir / "serving"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "pipeline_root"),
               enable_caching=enable_caching)
    warnings.filterwarnings("ignore", message="You may be attemping to run a task")
    params = {"model_base_path": str(serving / "flowers"), "model_config_file": str(serving / "models.config"),
              **params}
    task = build_pipeline(use_gpu=False)(data_dir=str(data_dir), **params)
    return task, params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="write the pipeline YAML")
    c.add_argument("--output", default="pipeline.yaml")
    c.add_argument("--no-gpu", action="store_true", help="train on CPU nodes")
    c.add_argument("--gpu-type", default=DEFAULT_GPU, help=f"value of the {GPU_NODE_LABEL} node label")
    c.add_argument("--automl", action="store_true", help="the AutoML variant (flowers.pipeline.automl)")
    r = sub.add_parser("run", help="run the pipeline")
    r.add_argument("--local", action="store_true", required=True, help="on this machine (kfp.local)")
    r.add_argument("--data", default=str(ROOT / "data" / "sample"), help="folder-per-class photo tree")
    r.add_argument("--workdir", default=str(ROOT / "demo-output"))
    r.add_argument("--backbone", default=defaults.BACKBONE)
    r.add_argument("--max_steps", type=int, default=defaults.MAX_STEPS)
    r.add_argument("--eval_fraction", type=float, default=0.1)
    r.add_argument("--accuracy_threshold", type=float, default=0.9)
    r.add_argument("--no-cache", action="store_true", help="re-run every step, preprocessing included")
    s = sub.add_parser("submit", help="submit a run to a Kubeflow Pipelines endpoint")
    s.add_argument("--host", required=True)
    s.add_argument("--experiment", default="flowers")
    s.add_argument("--run-name")
    s.add_argument("--no-gpu", action="store_true")
    s.add_argument("--no-cache", action="store_true", help="re-run every step, preprocessing included")
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
    args = parser.parse_args(argv)

    if args.command == "compile":
        compile_pipeline(args.output, use_gpu=not args.no_gpu, gpu_type=args.gpu_type, automl=args.automl)
        print(f"wrote {args.output}")
    elif args.command == "run":
        _, params = run_local(args.data, args.workdir, backbone=args.backbone, max_steps=args.max_steps,
                              eval_fraction=args.eval_fraction, accuracy_threshold=args.accuracy_threshold,
                              enable_caching=not args.no_cache)
        print(f"\nmodel versions: {params['model_base_path']}\nmodels.config: {params['model_config_file']}\n"
              f"serve it:  flowers serve --model_config_file {params['model_config_file']} "
              "--port 8500 --rest_api_port 8501")
    else:
        import kfp

        params = dict(p.split("=", 1) for p in args.param)
        result = kfp.Client(host=args.host).create_run_from_pipeline_func(
            build_pipeline(use_gpu=not args.no_gpu), arguments=params, run_name=args.run_name,
            experiment_name=args.experiment, enable_caching=False if args.no_cache else None)
        print(f"submitted run {result.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
