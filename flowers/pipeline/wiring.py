"""Pieces of pipeline wiring shared by the main pipeline (pipeline.py) and its AutoML variant
(flowers.pipeline.automl): the first two steps, GPU placement, and the gate + deploy ending."""
from kfp import dsl, kubernetes

from flowers.pipeline import components

GPU_NODE_LABEL = "cloud.google.com/gke-accelerator"


def import_and_preprocess(data_dir, train_csv, eval_csv, dict_path, eval_fraction, seed, backbone, beam_args):
    """import data -> preprocess (cached); returns the preprocess task (train_records, eval_records)."""
    data = components.import_data(data_dir=data_dir, train_csv=train_csv, eval_csv=eval_csv,
                                  dict_path=dict_path, eval_fraction=eval_fraction, seed=seed)
    data.set_display_name("Import data")
    pre = components.preprocess(dataset=data.outputs["dataset"], backbone=backbone, beam_args=beam_args)
    pre.set_display_name("Preprocess (Beam)").set_caching_options(True)
    return pre


def on_gpu(task, gpu_type, gpu_count=1):
    """An nvidia.com/gpu request, a GKE accelerator node selector and the GPU taint's toleration."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu_count)
    kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL, label_value=gpu_type)
    kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    return task


def gate_and_deploy(model, accuracy_threshold, model_base_path, model_config_file, model_name, label):
    """evaluate (metrics, report, the gate against `stable`) -> deploy inside dsl.If, so a refused model
    shows as a skipped step (KFP UI and kfp.local alike: it resolves a single-output condition)."""
    gate = components.evaluate(model=model, accuracy_threshold=accuracy_threshold, model_base_path=model_base_path,
                               model_config_file=model_config_file, model_name=model_name)
    gate.set_display_name("Evaluate (gate)").set_caching_options(False)
    with dsl.If(gate.outputs["Output"] == "deploy", name="gate-passed"):
        dep = components.deploy(model=model, model_base_path=model_base_path, model_config_file=model_config_file,
                                model_name=model_name, label=label)
        dep.set_display_name("Deploy").set_caching_options(False)
    return gate
