"""The compiled Kubeflow pipeline, and the deploy gate's decisions."""
import json
import subprocess
import sys

import yaml

from flowers.core import model_config
from flowers.deploy import gate

from conftest import ROOT


def compile_yaml(tmp_path, *flags):
    out = tmp_path / "pipeline.yaml"
    subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "compile", "--output", str(out), *flags],
                   check=True, capture_output=True)
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


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


def test_steps_pass_typed_artifacts_and_deploy_is_gated(tmp_path):
    spec, _ = compile_yaml(tmp_path)
    comps = spec["components"]
    assert comps["comp-preprocess"]["outputDefinitions"]["artifacts"]["train_records"]["artifactType"][
        "schemaTitle"] == "system.Dataset"
    assert comps["comp-train"]["outputDefinitions"]["artifacts"]["model"]["artifactType"][
        "schemaTitle"] == "system.Model"
    evaluate = comps["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert evaluate["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert evaluate["confusion"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    assert evaluate["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    tasks = spec["root"]["dag"]["tasks"]
    decision = tasks["deploy"]["inputs"]["parameters"]["decision"]["taskOutputParameter"]
    assert decision == {"producerTask": "evaluate", "outputParameterKey": "decision"}
    assert tasks["deploy"]["cachingOptions"].get("enableCache", False) is False
    assert tasks["preprocess"]["cachingOptions"]["enableCache"] is True


def test_gate_refuses_a_worse_model(tmp_path):
    base = tmp_path / "flowers"
    (base / "3" / "assets.extra").mkdir(parents=True)
    (base / "3" / "assets.extra" / "metrics.json").write_text(json.dumps({"accuracy": 0.95}))
    config = model_config.single_model("flowers", str(base))
    config.model_config_list.config[0].version_labels["stable"] = 3
    model_config.save(str(tmp_path / "models.config"), config)

    version, acc = gate.stable_accuracy(str(tmp_path / "models.config"))
    assert (version, acc) == (3, 0.95)
    ok, reason = gate.decide(0.93, 0.9, version, acc)
    assert not ok and "worse than stable version 3" in reason
    ok, reason = gate.decide(0.85, 0.9, None, None)
    assert not ok and "below the threshold" in reason
    assert gate.decide(0.96, 0.9, version, acc)[0]
    assert gate.decide(0.91, 0.9, *gate.stable_accuracy(str(tmp_path / "missing.config")))[0]
