import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PHOTOS = (ROOT.parent / "shared" / "datasets" / "flower_photos").resolve()
CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


def base_path_serving(models_dir, version_path, model="flowers"):
    """MODELS_DIR/MODEL, a TF Serving base path whose version 1 links to VERSION_PATH; returns it."""
    base = models_dir / model
    base.mkdir(parents=True)
    (base / "1").symlink_to(version_path, target_is_directory=True)
    return base


@pytest.fixture(scope="session")
def photos():
    """The shared flower photos (read-only): {class: [sorted paths]}."""
    if not PHOTOS.is_dir():
        pytest.fail(f"shared photos not found at {PHOTOS}")
    return {c: sorted(str(p) for p in (PHOTOS / c).glob("*.jpg")) for c in CLASSES}


@pytest.fixture(scope="session")
def photos_root():
    return str(PHOTOS)


@pytest.fixture(scope="session")
def exported_model(photos, tmp_path_factory):
    """A real, small servable model, made the way the pipeline makes one: `flowers preprocess`
    (efficientnet_lite0) on 16 photos per class, then `flowers.train.train` (the lab's head).

    Returns {"base_path", "version_path", "version", "labels", "backbone", "held_out"} where
    held_out maps each label to photos the head never saw (the eval set: evaluated, not trained on).
    """
    from flowers.core import records
    from flowers.preprocess import pipeline as preprocess
    from flowers.train import trainer as train

    backbone_name, per_class = "efficientnet_lite0", 16
    labels = list(CLASSES)
    held_out = {c: photos[c][per_class:per_class + 4] for c in labels}
    work = tmp_path_factory.mktemp("exported_model")
    (work / "dict.txt").write_text("".join(f"{c}\n" for c in labels))
    (work / "train_set.csv").write_text("".join(f"{p},{c}\n" for c in labels for p in photos[c][:per_class]))
    (work / "eval_set.csv").write_text("".join(f"{p},{c}\n" for c in labels for p in held_out[c]))
    prefixes = [str(work / "train"), str(work / "eval")]
    preprocess.run(["--input_path", f"{work / 'train_set.csv'},{work / 'eval_set.csv'}",
                    "--input_dict", str(work / "dict.txt"), "--output_path", ",".join(prefixes),
                    "--backbone", backbone_name])
    result = train.train(*map(records.shard_pattern, prefixes), str(work / "run"), max_steps=100, verbose=False)
    return {"base_path": str(work / "run" / "model"), "version_path": result["export_path"],
            "version": result["version"], "labels": labels, "backbone": backbone_name, "held_out": held_out}
