"""The whole Kubeflow pipeline under kfp.local on real photos: it deploys a servable model, and its
gate refuses a worse one on the next run."""
import importlib.util
import os

import pytest

from flowers import testing
from flowers.core import model_config
from flowers.predict import client

from conftest import CLASSES, ROOT

PER_CLASS, HELD_OUT = 16, 4


@pytest.fixture(scope="module")
def pipeline_module():
    spec = importlib.util.spec_from_file_location("flowers_pipeline_cli", ROOT / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photo_tree(photos, tmp_path_factory):
    """A folder-per-class tree of PER_CLASS shared photos each (links), and photos held aside."""
    root = tmp_path_factory.mktemp("tree")
    for c in CLASSES:
        (root / c).mkdir()
        for p in photos[c][-PER_CLASS:]:
            os.symlink(p, root / c / os.path.basename(p))
    return root, {c: photos[c][:HELD_OUT] for c in CLASSES}


def test_local_run_deploys_then_gate_refuses_a_worse_model(pipeline_module, photo_tree, tmp_path):
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

    # An untrained head is worse than stable: evaluated, recorded, not deployed.
    pipeline_module.run_local(root, tmp_path, max_steps=0, **{**common, "accuracy_threshold": 0.0})
    config = model_config.load(params["model_config_file"])
    assert dict(model_config.find(config, "flowers").version_labels) == {"stable": 1}
    assert sorted(os.listdir(params["model_base_path"])) == ["1"]
