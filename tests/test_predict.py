"""`flowers predict` and `flowers batch-predict` against real servers and real SavedModels: what
they print, and which version answers when no --label/--version is given (`stable`)."""
import base64
import io
import json
import pathlib

import pytest
import tensorflow as tf
from PIL import Image

from flowers import testing
from flowers.core import base_path
from flowers.deploy import versions
from flowers.predict import batch as batch_predict, cli as predict

from conftest import base_path_serving

MODEL = "flowers"


def decoy_saved_model(path):
    """A SavedModel that loads but has no serving_default: any request that reaches it fails."""
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x}, input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(path), signatures={"decoy": module.f})


@pytest.fixture(scope="module")
def two_versions(exported_model, tmp_path_factory):
    """BASE/1 the real model (stable), BASE/2 a decoy (canary), both served; models.config beside BASE."""
    folder = tmp_path_factory.mktemp("two_versions")
    base = base_path_serving(folder / "models", exported_model["version_path"], MODEL)
    decoy_saved_model(base / "2")
    args = testing.write_config_files(str(folder / "models"), MODEL, base, labels={"stable": 1, "canary": 2},
                                      policy="specific { versions: 1 versions: 2 }")
    return {"base": base, "config": folder / "models" / "models.config", "args": args, "model": exported_model}


@pytest.fixture(scope="module")
def live(two_versions):
    with testing.running([*two_versions["args"], "--model_config_file_poll_wait_seconds", "0.5"]) as (rest, grpc):
        yield {**two_versions, "rest": rest, "grpc": grpc}


def held_out(model, n_per_class=1):
    held = model["held_out"]
    return [p for c in sorted(held) for p in held[c][:n_per_class]]


def read(paths):
    return [open(p, "rb").read() for p in paths]


def test_predict_cli_prints_json_lines_and_table(live, tmp_path, capsys):
    paths = held_out(live["model"])[:2]
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    assert predict.main([*paths, str(bad), "--server", live["rest"], "--format", "json"]) == 1
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["key"] for r in rows] == paths
    assert all(set(r) == {"key", "prediction", "label", "scores"} for r in rows)
    assert f"{bad}: skipped: not_an_image" in err
    assert predict.main([*paths, "--grpc", live["grpc"], "--label", "stable", "--keys", "a", "b"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["a", "b"]
    assert [line.split("\t")[1] for line in lines] == [r["label"] for r in rows]
    assert predict.main([*paths, "--server", live["rest"], "--json"]) == 0  # the old spelling still works
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == rows


@pytest.mark.parametrize("endpoint", ["rest", "grpc"])
def test_predict_without_label_or_version_asks_stable_not_the_highest_version(live, endpoint, capsys):
    """The canary (2, the highest) would fail every request; stable (1) answers."""
    where = ["--server", live["rest"]] if endpoint == "rest" else ["--grpc", live["grpc"]]
    paths = held_out(live["model"])[:2]
    assert predict.main([*paths, *where]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and "stable -> version 1" in err
    assert predict.main([*paths, *where, "--label", "canary"]) == 1  # the decoy: reached only when asked
    assert "not found in signature def" in capsys.readouterr().err


def test_json_instances_accepts_request_json_and_gcloud_newline_delimited(live, tmp_path, capsys):
    paths = held_out(live["model"])[:2]
    request = tmp_path / "request.json"
    assert predict.main([*paths, "--dump_request", str(request)]) == 0
    body = json.loads(request.read_text())
    ndjson = tmp_path / "instances.json"
    ndjson.write_text("".join(json.dumps(i) + "\n" for i in body["instances"]))
    capsys.readouterr()
    outputs = []
    for path in (request, ndjson):
        assert predict.main(["--json_instances", str(path), "--server", live["rest"], "--format", "json"]) == 0
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert [r["key"] for r in outputs[0]] == paths and outputs[0] == outputs[1]


def test_dump_request_writes_the_labs_request_json_without_a_server(photos, tmp_path):
    paths = photos["roses"][:2]
    for flag in ("--dump_request", "--dump-request"):
        out = tmp_path / f"request{flag}.json"
        assert predict.main([*paths, flag, str(out)]) == 0
        body = json.loads(out.read_text())
        assert [i["key"] for i in body["instances"]] == paths
        assert [base64.b64decode(i["image_bytes"]["b64"]) for i in body["instances"]] == read(paths)


def test_batch_predict_writes_predictions_and_rejects_bad_files(exported_model, tmp_path):
    held = exported_model["held_out"]
    good = [held["daisy"][0], held["tulips"][0], held["roses"][0]]
    (tmp_path / "notes.jpg").write_text("not an image")
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(png, "PNG")
    (tmp_path / "cut.png").write_bytes(png.getvalue()[:60])  # a valid header, then nothing: fails in the model
    csv = tmp_path / "images.csv"
    csv.write_text(f"{good[0]},daisy\n{good[1]}\ncut.png\n{good[2]},roses\nnotes.jpg,daisy\nmissing.jpg\n")
    result = batch_predict.run(["--input_path", str(csv), "--output_path", str(tmp_path / "out" / "predictions"),
                                "--model_dir", exported_model["base_path"], "--batch_size", "4"])
    lines = [json.loads(line) for f in sorted((tmp_path / "out").glob("predictions-*.json"))
             for line in f.read_text().splitlines()]
    assert sorted(r["key"] for r in lines) == sorted(good)
    by_key = {r["key"]: r for r in lines}
    assert by_key[good[0]]["labels"] == ["daisy"] and "labels" not in by_key[good[1]]
    assert all(abs(sum(r["scores"]) - 1) < 1e-4 and r["label"] in exported_model["labels"] for r in lines)
    rejected = [json.loads(line) for f in (tmp_path / "out").glob("predictions.rejected-*.json")
                for line in f.read_text().splitlines()]
    assert sorted((pathlib.Path(r["uri"]).name, r["reason"]) for r in rejected) == [
        ("cut.png", "corrupt_image"), ("missing.jpg", "missing_file"), ("notes.jpg", "not_an_image")]
    assert batch_predict.counts(result) == {"predicted": 3, "rejected_corrupt_image": 1,
                                            "rejected_missing_file": 1, "rejected_not_an_image": 1}
    accuracy = batch_predict.accuracy(str(tmp_path / "out" / "predictions"))
    assert accuracy["total"] == 2 and set(accuracy["per_class"]) == {"daisy", "roses"}
    assert accuracy["right"] == sum(by_key[p]["label"] == c for p, c in ((good[0], "daisy"), (good[2], "roses")))


def test_batch_predict_uses_the_stable_version_of_a_base_path(two_versions, tmp_path, capsys):
    """BASE/2 (the highest, a canary) is a decoy that cannot predict: the run must use stable (1)."""
    paths = held_out(two_versions["model"])
    csv = tmp_path / "eval.csv"
    csv.write_text("".join(f"{p},{pathlib.Path(p).parent.name}\n" for p in paths))
    out = tmp_path / "out" / "predictions"
    assert batch_predict.main(["--input_path", str(csv), "--output_path", str(out),
                               "--model_dir", str(two_versions["base"])]) == 0
    printed = capsys.readouterr()
    assert "stable -> version 1" in printed.err
    assert f"{len(paths)} predicted" in printed.out and "accuracy " in printed.out
    assert batch_predict.accuracy(str(out))["total"] == len(paths)


def test_batch_predict_version_choice(tmp_path):
    """--version, --label, stable from models.config, else the highest (folders only: no model loads)."""
    base = tmp_path / "models" / MODEL
    for v in (1, 2, 3):
        (base / str(v)).mkdir(parents=True)
        (base / str(v) / "saved_model.pb").write_bytes(b"")
    resolve = batch_predict.resolve_model_dir
    assert resolve(str(base))[0] == str(base / "3")  # no models.config: the highest
    config = tmp_path / "models" / "models.config"
    config.write_text(versions.edit_text("", MODEL, lambda m: versions.set_label(m, "stable", 1), str(base))[0])
    versions.update(versions.open_store(str(config)), MODEL, lambda m: versions.set_label(m, "canary", 3))
    assert resolve(str(base))[0] == str(base / "1")
    assert resolve(str(base), label="canary")[0] == str(base / "3")
    assert resolve(str(base), version=2)[0] == str(base / "2")
    assert resolve(str(base / "2"))[0] == str(base / "2")  # a SavedModel folder as given
    for kwargs, message in (({"label": "nope"}, "no label 'nope'"), ({"version": 7}, "no version 7")):
        with pytest.raises(batch_predict.ModelDirError, match=message):
            resolve(str(base), **kwargs)
    assert base_path.scan(str(base)).keys() == {1, 2, 3}


def test_batch_predict_runs_on_dataflow_with_cloud_and_rejects_unknown_flags(capsys):
    common = ["--input_path", "gs://b/eval.csv", "--output_path", "gs://b/out/p", "--model_dir", "gs://b/models/flowers"]
    args = batch_predict.parse_args([*common, "--cloud", "--project", "p", "--region", "europe-west1",
                                     "--temp_location", "gs://b/tmp", "--max_num_workers", "3"])
    opts = args.options.get_all_options()
    assert opts["runner"] == "DataflowRunner" and opts["max_num_workers"] == 3
    assert opts["sdk_container_image"].startswith("europe-west1-docker.pkg.dev/p/flowers/preprocess:")
    assert batch_predict.parse_args(common).options.get_all_options()["runner"] == "FnApiRunner"
    for wrong in (["--labl", "stable"], ["--cloud"], ["--runner=DataflowRunner", "--max_num_wokers=2"]):
        with pytest.raises(SystemExit):
            batch_predict.parse_args([*common, *wrong])
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and ("unrecognized" in err or "--cloud needs" in err), err
