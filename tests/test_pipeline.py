"""The Kubeflow pipeline: the compiled YAML, the deploy gate, pipeline.py's command line, the import
step under kfp.local, and the whole pipeline under kfp.local on real photos (it deploys a servable
model, and its gate refuses a worse one on the next run, whose deploy step is skipped)."""
import codecs
import importlib.util
import json
import logging
import os
import subprocess
import sys

import pytest
import yaml

from flowers import testing
from flowers.core import model_config
from flowers.data import rows as csv_rows
from flowers.deploy import gate
from flowers.predict import client

from conftest import CLASSES, ROOT

PER_CLASS, HELD_OUT = 16, 4  # 10 per class missed the 70 % bar on the grown dataset


@pytest.fixture(scope="module")
def pipeline_module():
    spec = importlib.util.spec_from_file_location("flowers_pipeline_cli", ROOT / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pipeline_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def compile_yaml(tmp_path, *flags):
    out = tmp_path / "pipeline.yaml"
    result = pipeline_cli("compile", "--output", str(out), *flags)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


# ---------------------------------------------------------------------------------------------
# The compiled pipeline.

def test_train_step_asks_for_a_gpu_node(tmp_path):
    spec, platform = compile_yaml(tmp_path, "--gpu-type", "nvidia-l4")
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
    images = {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}
    assert images["exec-preprocess"].endswith("/preprocess:0.1.0")
    assert images["exec-train"].endswith("/train:0.1.0")


def test_no_gpu_flag_drops_the_gpu_request(tmp_path):
    spec, platform = compile_yaml(tmp_path, "--no-gpu")
    assert "resources" not in spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert "exec-train" not in json.dumps(platform)


def test_steps_pass_typed_artifacts_and_deploy_runs_only_if_the_gate_passed(tmp_path):
    spec, _ = compile_yaml(tmp_path)
    comps = spec["components"]
    assert comps["comp-preprocess"]["outputDefinitions"]["artifacts"]["train_records"]["artifactType"][
        "schemaTitle"] == "system.Dataset"
    assert comps["comp-train"]["outputDefinitions"]["artifacts"]["model"]["artifactType"][
        "schemaTitle"] == "system.Model"
    evaluate = comps["comp-evaluate"]["outputDefinitions"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in evaluate["artifacts"].items()} == {
        "metrics": "system.Metrics", "confusion": "system.ClassificationMetrics", "gate_report": "system.Markdown",
        "report": "system.HTML"}
    assert list(evaluate["parameters"]) == ["Output"]  # one output: what kfp.local's dsl.If resolves

    tasks = spec["root"]["dag"]["tasks"]
    assert "deploy" not in tasks  # it sits in the condition's sub-DAG
    (name, branch), = [(n, t) for n, t in tasks.items() if t.get("triggerPolicy")]
    assert branch["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--evaluate-Output'] == 'deploy'"
    assert branch["dependentTasks"] == ["evaluate", "train"]
    inner = comps[branch["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["deploy"] and inner["deploy"]["cachingOptions"].get("enableCache", False) is False
    assert tasks["evaluate"]["inputs"]["parameters"]["model_base_path"]["componentInputParameter"] == \
        "model_base_path"  # the gate reads stable's metrics where the pipeline sees the versions
    assert tasks["preprocess"]["cachingOptions"]["enableCache"] is True


def test_parameters_have_descriptions_and_no_placeholder_defaults(tmp_path):
    spec, _ = compile_yaml(tmp_path)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert all(p.get("description") for p in params.values()), [n for n, p in params.items()
                                                                 if not p.get("description")]
    required = sorted(n for n, p in params.items() if not p.get("isOptional"))
    assert required == ["model_base_path", "model_config_file"]
    assert "BUCKET" not in json.dumps({n: p.get("defaultValue") for n, p in params.items()})
    assert params["max_steps"]["defaultValue"] == 1000 and params["accuracy_threshold"]["defaultValue"] == 0.9


# ---------------------------------------------------------------------------------------------
# The deploy gate.

def stable_config(tmp_path, config_base_path, stable=3):
    config = model_config.single_model("flowers", str(config_base_path))
    config.model_config_list.config[0].version_labels["stable"] = stable
    model_config.save(str(tmp_path / "models.config"), config)
    return str(tmp_path / "models.config")


def write_metrics(base, version, text):
    (base / str(version) / "assets.extra").mkdir(parents=True)
    (base / str(version) / "assets.extra" / "metrics.json").write_text(text)


def test_gate_refuses_a_worse_model(tmp_path):
    base = tmp_path / "flowers"
    write_metrics(base, 3, json.dumps({"accuracy": 0.95}))
    config = stable_config(tmp_path, base)

    version, acc = gate.stable_accuracy(config)
    assert (version, acc) == (3, 0.95)
    ok, reason = gate.decide(0.93, 0.9, version, acc)
    assert not ok and "worse than stable version 3" in reason
    ok, reason = gate.decide(0.85, 0.9, None, None)
    assert not ok and "below the threshold" in reason
    assert gate.decide(0.96, 0.9, version, acc)[0]
    # Nothing deployed yet (no config, or no stable label): the threshold alone decides.
    assert gate.check(0.91, 0.9, str(tmp_path / "missing.config")) == (
        True, "eval accuracy 0.9100 passes the threshold 0.9000 and no stable version")


def test_gate_reads_stable_where_the_pipeline_sees_the_versions(tmp_path):
    """models.config names the server's path (/models/flowers in a pod); the gate reads the
    pipeline's model_base_path. The old gate read the server's path, found nothing, deployed."""
    base = tmp_path / "flowers"
    write_metrics(base, 3, json.dumps({"accuracy": 0.95}))
    config = stable_config(tmp_path, "/models/flowers")
    ok, reason = gate.check(0.93, 0.9, config, str(base))
    assert not ok and "worse than stable version 3 (0.9500)" in reason


@pytest.mark.parametrize("metrics", [None, "{not json", json.dumps({"loss": 0.1}), "[]"])
def test_gate_refuses_when_stable_metrics_cannot_be_read(tmp_path, metrics):
    base = tmp_path / "flowers"
    if metrics is None:
        (base / "3").mkdir(parents=True)  # a version exported without metrics
    else:
        write_metrics(base, 3, metrics)
    config = stable_config(tmp_path, base)
    ok, reason = gate.check(0.99, 0.9, config, str(base))
    assert not ok
    assert "stable version 3" in reason and "refusing to deploy" in reason
    # The same when the pipeline's base path is not readable at all.
    ok, reason = gate.check(0.99, 0.9, config, str(tmp_path / "elsewhere"))
    assert not ok and "refusing to deploy" in reason


def test_gate_refuses_when_models_config_cannot_be_read(tmp_path):
    (tmp_path / "models.config").write_text("model_config_list { config { name: ")
    ok, reason = gate.check(0.99, 0.9, str(tmp_path / "models.config"), str(tmp_path))
    assert not ok and f"cannot read {tmp_path / 'models.config'}" in reason


# ---------------------------------------------------------------------------------------------
# pipeline.py's command line: bad input is one line on stderr, before anything runs.

@pytest.mark.parametrize("args,message", [
    (["submit", "--host", "http://127.0.0.1:9", "--param", "max_steps"], "--param 'max_steps': expected NAME=VALUE"),
    (["submit", "--host", "http://127.0.0.1:9", "--param", "max_steps=many"], "expected integer"),
    (["submit", "--host", "http://127.0.0.1:9", "--param", "steps=3"], "no such pipeline parameter"),
    (["submit", "--host", "http://127.0.0.1:9", "--param", "data_dir=gs://b/photos"],
     "missing required pipeline parameter(s): model_base_path, model_config_file"),
    (["submit", "--host", "http://127.0.0.1:9", "--param", "model_base_path=gs://b/m",
      "--param", "model_config_file=gs://b/models.config", "--param", "train_csv=gs://b/t.csv"], "no data:"),
    (["run", "--local", "--data", "/nonexistent/photos"], "--data /nonexistent/photos: not a folder"),
])
def test_cli_refuses_bad_input_in_one_line(args, message):
    result = pipeline_cli(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_run_local_refuses_a_folder_without_class_folders_before_any_step(tmp_path):
    (tmp_path / "photos" / "daisy").mkdir(parents=True)  # a class folder with no images
    result = pipeline_cli("run", "--local", "--data", str(tmp_path / "photos"), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    # The one line (after TensorFlow's start-up notices), and no step ran.
    assert result.stderr.splitlines()[-1] == \
        f"pipeline.py run: error: --data {tmp_path / 'photos'}: no class folders with images"
    assert not (tmp_path / "w").exists()


def test_submit_to_an_unreachable_host_is_one_line(tmp_path):
    port = testing.free_port()  # nothing listens there
    result = pipeline_cli("submit", "--host", f"http://127.0.0.1:{port}", "--param", "model_base_path=gs://b/m",
                          "--param", "model_config_file=gs://b/models.config", "--param", "data_dir=gs://b/p")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"cannot reach Kubeflow Pipelines at http://127.0.0.1:{port}" in result.stderr


# ---------------------------------------------------------------------------------------------
# kfp.local runs.

@pytest.mark.filterwarnings("ignore:You may be attemping to run a task")
def test_import_step_reads_quoted_uris_and_a_bom(pipeline_module, tmp_path):
    """The import component itself under kfp.local, given the lab's CSVs: a BOM, CRLF, a quoted uri
    holding a comma (the old step split at the first comma: uri `"photos/a`)."""
    from kfp import local

    from flowers.pipeline import components

    src = tmp_path / "in"
    src.mkdir()
    bom = codecs.BOM_UTF8.decode()
    (src / "train.csv").write_text(f'{bom}"photos/red, white.jpg", roses\r\nphotos/b.jpg,daisy\r\n', newline="")
    (src / "eval.csv").write_text(f'{bom}"gs://bucket/x,y.jpg",daisy\n')
    (src / "dict.txt").write_text(f"{bom}daisy\r\nroses\r\n\r\n", newline="")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = components.import_data(data_dir="", train_csv=str(src / "train.csv"), eval_csv=str(src / "eval.csv"),
                                  dict_path=str(src / "dict.txt"), eval_fraction=0.1, seed=0)
    out = task.outputs["dataset"]
    assert out.metadata == {"labels": ["daisy", "roses"], "train_rows": 2, "eval_rows": 1}
    train, rejected = csv_rows.read_rows(os.path.join(out.path, "train_set.csv"))
    assert rejected == []
    assert [(r.uri, r.labels) for r in train] == [(str(src / "photos" / "red, white.jpg"), ("roses",)),
                                                  (str(src / "photos" / "b.jpg"), ("daisy",))]
    evals, _ = csv_rows.read_rows(os.path.join(out.path, "eval_set.csv"))
    assert [(r.uri, r.labels) for r in evals] == [("gs://bucket/x,y.jpg", ("daisy",))]
    assert csv_rows.read_dict(os.path.join(out.path, "dict.txt")) == ["daisy", "roses"]


@pytest.fixture(scope="module")
def photo_tree(photos, tmp_path_factory):
    """A folder-per-class tree of PER_CLASS shared photos each (links), and photos held aside."""
    root = tmp_path_factory.mktemp("tree")
    for c in CLASSES:
        (root / c).mkdir()
        for p in photos[c][-PER_CLASS:]:
            os.symlink(p, root / c / os.path.basename(p))
    return root, {c: photos[c][:HELD_OUT] for c in CLASSES}


def test_local_run_deploys_then_skips_deploy_for_a_worse_model(pipeline_module, photo_tree, tmp_path, caplog):
    root, held_out = photo_tree
    common = dict(backbone="efficientnet_lite0", eval_fraction=0.2, accuracy_threshold=0.5)
    _, params = pipeline_module.run_local(root, tmp_path, max_steps=300, **common)
    config = model_config.load(params["model_config_file"])
    assert dict(model_config.find(config, "flowers").version_labels) == {"stable": 1}

    paths = [p for c in CLASSES for p in held_out[c]]
    with testing.running(["--model_config_file", params["model_config_file"]]) as (rest_url, _):
        preds = client.RestClient(rest_url).predict([open(p, "rb").read() for p in paths], keys=paths,
                                                    label="stable")
    right = sum(p["label"] == c for p, c in zip(preds, [c for c in CLASSES for _ in held_out[c]]))
    assert [p["key"] for p in preds] == paths
    assert right >= 0.7 * len(paths), f"{right}/{len(paths)} held-aside photos right"

    # An untrained head is worse than stable: evaluated, the reason recorded, the deploy step skipped.
    caplog.set_level(logging.INFO)
    pipeline_module.run_local(root, tmp_path, max_steps=0, **{**common, "accuracy_threshold": 0.0})
    assert any(r.getMessage().startswith("Skipping conditional task") for r in caplog.records), \
        "the deploy branch was not skipped"
    run = sorted((tmp_path / "pipeline_root").iterdir())[-1]
    assert not (run / "deploy").exists()
    report = (run / "evaluate" / "gate_report").read_text()
    assert report.startswith("## Deploy gate: skip") and "worse than stable version 1" in report
    config = model_config.load(params["model_config_file"])
    assert dict(model_config.find(config, "flowers").version_labels) == {"stable": 1}
    assert sorted(os.listdir(params["model_base_path"])) == ["1"]
