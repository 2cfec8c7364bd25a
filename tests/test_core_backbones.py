"""The backbone registry and the EfficientNet-Lite port, checked on real photos."""
import json
import pickle
import subprocess
import sys

import keras
import numpy as np
import pytest

from flowers.core import backbones, images
from flowers.core.backbones import efficientnet_lite, torch_pickle

DAISY = 985
N_DAISY = 100


@pytest.mark.parametrize("name,min_rate", [("efficientnet_lite0", 0.9), ("efficientnet_lite1", 0.9),
                                            ("efficientnet_lite2", 0.9)])
def test_port_puts_daisy_in_the_top5_of_daisy_photos(photos, name, min_rate):
    spec = backbones.get(name)
    model = backbones.load(name, include_top=True)
    x = np.stack([images.load_image(open(p, "rb").read(), spec.image_size) for p in photos["daisy"][:N_DAISY]])
    logits = model.predict(x, batch_size=25, verbose=0)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    rate = float(np.mean([DAISY in row for row in top5]))
    print(f"{name}: daisy in top-5 for {rate:.1%} of {len(x)} daisy photos")
    assert rate >= min_rate
    assert backbones.imagenet_class_names()[DAISY] == "daisy"


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_embedding_model_matches_registry(name):
    spec = backbones.get(name)
    model = backbones.load(name)
    assert model.input_shape == (None, spec.image_size, spec.image_size, 3)
    assert model.output_shape == (None, spec.embedding_size)


# The embedding ends with the head's pooled features (the logits' input) after the pooled outputs of
# the last stages: the ImageNet classifier applied to its last 1280 values gives the port's logits.
def test_embedding_ends_with_the_features_the_imagenet_classifier_reads(photos):
    name = "efficientnet_lite0"
    spec = backbones.get(name)
    x = np.stack([images.load_image(open(photos[label][0], "rb").read(), spec.image_size) for label in sorted(photos)])
    embedding = backbones.load(name).predict(x, verbose=0)
    full = backbones.load(name, include_top=True)
    kernel, bias = full.get_layer("logits").get_weights()
    np.testing.assert_allclose(embedding[:, -1280:] @ kernel + bias, full.predict(x, verbose=0), atol=1e-3, rtol=0)
    stages = embedding[:, :-1280]
    assert stages.shape[1] == spec.embedding_size - 1280 == 80 + 112 + 192 + 320
    assert stages.std(axis=0).mean() > 0.01  # pooled features that vary from photo to photo


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'"):
        backbones.get("resnet9")


@pytest.mark.parametrize("name", ["inception_v3", "mobilenet_v2"])
def test_keras_application_without_weights_fails_clearly(name, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached weights
    with pytest.raises(RuntimeError, match=r"--weights PATH"):
        backbones.load(name, weights=str(tmp_path / "missing.h5"))


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for obj in (torch_pickle.MAGIC_NUMBER, 1001, {}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump(Evil(), f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (__builtin__|builtins)\.print"):
        torch_pickle.load_state_dict(path)


def test_state_dict_reads_every_tensor():
    sd = torch_pickle.load_state_dict(efficientnet_lite.weights_path("efficientnet_lite0"))
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.weight"].dtype == np.float32
    assert np.isfinite(sd["_conv_stem.weight"]).all()


def test_classify_cli_json(photos):
    paths = photos["daisy"][:2]
    out = subprocess.run([sys.executable, "-m", "flowers", "backbone", "classify", "--json",
                          "--backbone", "efficientnet_lite0", *paths],
                         capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in rows] == paths
    for row in rows:
        assert len(row["top5"]) == 5 and set(row["top5"][0]) == {"class_id", "name", "score"}
    assert any(t["class_id"] == DAISY and t["name"] == "daisy" for r in rows for t in r["top5"])


def write_legacy_pth(path, size, stride, offset=0, numel=6, data_elements=None):
    """A legacy torch state dict with one float tensor, crafted without torch: fake `torch`
    modules let pickle name the globals torch would (torch.FloatStorage, _rebuild_tensor_v2)."""
    import collections
    import struct
    import types

    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    FloatStorage.__qualname__, _rebuild_tensor_v2.__qualname__ = "FloatStorage", "_rebuild_tensor_v2"
    torch_mod.FloatStorage, utils_mod._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    storage = object()

    class Tensor:
        def __reduce__(self):
            return (_rebuild_tensor_v2, (storage, offset, tuple(size), tuple(stride), False,
                                         collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", FloatStorage, "0", "cpu", numel, None) if obj is storage else None

    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch_mod, "torch._utils": utils_mod})
    try:
        with open(path, "wb") as f:
            for obj in (torch_pickle.MAGIC_NUMBER, 1001, {}):
                pickle.dump(obj, f, protocol=2)
            Pickler(f, protocol=2).dump(collections.OrderedDict(w=Tensor()))
            pickle.dump(["0"], f, protocol=2)
            f.write(struct.pack("<q", numel))
            f.write(np.arange(numel if data_elements is None else data_elements, dtype=np.float32).tobytes())
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_crafted_legacy_file_round_trips(tmp_path):
    write_legacy_pth(tmp_path / "ok.pth", size=(2, 3), stride=(3, 1))
    np.testing.assert_array_equal(torch_pickle.load_state_dict(tmp_path / "ok.pth")["w"],
                                  np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("kw,message", [
    (dict(size=(1000, 1000), stride=(1000, 1)), "reaches element"),  # larger than its storage
    (dict(size=(2, 3), stride=(3, 1), offset=5), "reaches element"),
    (dict(size=(2, 3), stride=(-3, 1)), "negative"),  # negative stride
    (dict(size=(2, 3), stride=(3, 1), data_elements=2), "cut short"),  # short data
])
def test_crafted_weights_are_refused_without_crashing(tmp_path, kw, message):
    """Run in a child process: on a loader without bounds checks these read past the buffer
    (segfault or garbage), which must show as a failed test, not a dead test run."""
    path = tmp_path / "crafted.pth"
    write_legacy_pth(path, **kw)
    code = ("import sys; from flowers.core.backbones import torch_pickle\n"
            "try:\n    torch_pickle.load_state_dict(sys.argv[1])\n"
            "except ValueError as e:\n    print('refused:', e); sys.exit(0)\n"
            "print('loaded'); sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert message in done.stdout


# Batch norm folded into the convolutions at load time: the same embeddings (and logits) as the
# wheel's graph with separate BatchNormalization layers, within 1e-4, on real photos.
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_folded_backbone_matches_the_unfolded_one(photos, name):
    size = backbones.get(name).image_size
    paths = [photos[label][i] for label in sorted(photos) for i in (0, 9)]
    x = np.stack([images.load_image(open(p, "rb").read(), size) for p in paths])
    for include_top in (False, True):
        folded = efficientnet_lite.build(name, size, include_top=include_top)
        reference = efficientnet_lite.build(name, size, include_top=include_top, fold_bn=False)
        assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
        assert len(reference.layers) > len(folded.layers)  # the reference really has its BN layers
        np.testing.assert_allclose(folded.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-4, rtol=0)
    assert backbones.load(name).count_params() == folded.count_params() - 1000 * 1281  # load() folds
