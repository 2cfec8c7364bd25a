"""`flowers preprocess`: a real Beam run (train + eval in one pipeline) on shared photos mixed
with every kind of bad input, checked record by record against the backbone itself."""
import csv
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import flowers
from flowers.core import backbones, images, records
from flowers.preprocess import options, outputs, pipeline as preprocess

BACKBONE = "efficientnet_lite0"  # the fast one
MAX_PIXELS = 1_000_000  # small enough that a 1100x1000 image is a "bomb", large enough for the photos
LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


@pytest.fixture(scope="module")
def run(photos, tmp_path_factory):
    """One pipeline run over train.csv (good, multi-label, relative and bad rows) and eval.csv."""
    tmp = tmp_path_factory.mktemp("preprocess")
    # A UTF-8 BOM in dict.txt and the CSV (Windows editors write one) must change nothing.
    (tmp / "dict.txt").write_text("\ufeff" + "".join(f"{label}\n" for label in LABELS))
    (tmp / "sub").mkdir()
    shutil.copy(photos["roses"][3], tmp / "sub" / "relative.jpg")
    (tmp / "empty.jpg").write_bytes(b"")
    (tmp / "notes.jpg").write_text("not an image at all\n")
    jpeg = open(photos["daisy"][5], "rb").read()
    (tmp / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    Image.new("L", (1100, 1000)).save(tmp / "bomb.png")
    os.mkfifo(tmp / "pipe.jpg")  # reading it would block forever

    good = [(p, [label]) for label in LABELS for p in photos[label][:3]]
    good += [(str(tmp / "sub" / "relative.jpg"), ["roses"]),  # listed by its relative path below
             (photos["tulips"][4], ["tulips", "roses"])]  # several labels
    bad = {  # CSV line -> expected reason
        f"{tmp / 'missing.jpg'},daisy": "missing_file",
        f"{tmp},daisy": "not_a_file",  # a directory
        "empty.jpg,daisy": "empty_file",
        "notes.jpg,daisy": "not_an_image",
        "truncated.jpg,daisy": "corrupt_image",
        "bomb.png,tulips": "too_large",
        f"{photos['daisy'][6]},cactus": "unknown_label",
        f"{photos['daisy'][7]}": "malformed_row",
        f'"{photos["daisy"][8]},daisy': "malformed_row",  # unterminated quote
        "pipe.jpg,daisy": "not_a_file",  # a FIFO
        "caf\ufffd.jpg,daisy": "malformed_row",  # written in Latin-1 below: one bad row, not a failed run
    }
    lines = [f"{p},{','.join(labels)}" for p, labels in good]
    lines[-2] = "sub/relative.jpg,roses"
    lines = lines[:5] + list(bad) + lines[5:] + ["./sub/relative.jpg,roses"]  # the same image again
    bad["./sub/relative.jpg,roses"] = "duplicate"
    data = "\ufeff" + "\n".join(lines) + "\n"
    (tmp / "train.csv").write_bytes(data.encode("utf-8").replace("caf\ufffd".encode(), "caf\xe9".encode("latin-1")))
    eval_rows = [(p, ["sunflowers"]) for p in photos["sunflowers"][5:7]]
    (tmp / "eval.csv").write_text("".join(f"{p},sunflowers\n" for p, _ in eval_rows))

    out = tmp / "out"
    argv = ["--input_path", f"{tmp / 'train.csv'},{tmp / 'eval.csv'}", "--input_dict", str(tmp / "dict.txt"),
            "--output_path", f"{out / 'train'},{out / 'eval'}", "--backbone", BACKBONE,
            "--max_pixels", str(MAX_PIXELS)]
    exit_code = preprocess.main(argv)
    return {"tmp": tmp, "exit_code": exit_code, "train": str(out / "train"), "eval": str(out / "eval"),
            "good": dict(good), "eval_rows": dict(eval_rows), "bad": bad, "lines": lines}


def read_records(prefix):
    files = tf.io.gfile.glob(records.shard_pattern(prefix))
    assert files, f"no shards for {prefix}"
    serialized = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    parsed = records.parse(tf.constant(serialized), backbones.get(BACKBONE).embedding_size)
    uris = [u.decode() for u in parsed["image_uri"].numpy()]
    labels = tf.RaggedTensor.from_sparse(parsed["label"]).to_list()
    return {u: (e, lab) for u, e, lab in zip(uris, parsed["embedding"].numpy(), labels)}


def test_exit_code_and_metadata(run):
    assert run["exit_code"] == 0
    for split, n_good, n_bad in (("train", len(run["good"]), len(run["bad"])), ("eval", 2, 0)):
        meta = records.read_metadata(run[split])
        assert meta["backbone"] == BACKBONE
        assert meta["image_size"] == backbones.get(BACKBONE).image_size and meta["embedding_size"] == 1984
        assert meta["labels"] == LABELS
        assert meta["beam_version"] == "2.77.0"
        assert meta["input_path"] == str(run["tmp"] / f"{split}.csv")
        counts = meta["counts"]
        assert counts["written"] == n_good
        assert counts["read"] == n_good + n_bad == counts["written"] + sum(counts["rejected"].values())
    train_rejected = records.read_metadata(run["train"])["counts"]["rejected"]
    expected = {}
    for reason in run["bad"].values():
        expected[reason] = expected.get(reason, 0) + 1
    assert train_rejected == expected


def test_records_hold_the_backbones_embedding_of_each_file(run):
    model = backbones.load(BACKBONE)
    size = backbones.get(BACKBONE).image_size
    for split, rows in (("train", run["good"]), ("eval", run["eval_rows"])):
        got = read_records(run[split])
        assert sorted(got) == sorted(rows)  # every good row once, nothing else
        uris = sorted(rows)
        x = np.stack([images.load_image(open(u, "rb").read(), size) for u in uris])
        want = model.predict(x, batch_size=32, verbose=0)
        for uri, embedding in zip(uris, want):
            stored, label_ids = got[uri]
            np.testing.assert_allclose(stored, embedding, atol=1e-4, rtol=0)
            assert label_ids == [LABELS.index(label) for label in rows[uri]]


def test_rejected_csv_lists_each_bad_row_with_its_reason(run):
    with open(outputs.rejected_path(run["train"])) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["line", "input", "reason", "message"]
    by_line = {int(line): (inp, reason, message) for line, inp, reason, message in rows[1:]}
    assert len(by_line) == len(rows) - 1 == len(run["bad"])
    for line_no, text in enumerate(run["lines"], 1):
        if text not in run["bad"]:
            assert line_no not in by_line
            continue
        inp, reason, message = by_line[line_no]
        assert reason == run["bad"][text], (text, message)
        assert message
        if reason in ("malformed_row", "unknown_label"):
            assert inp == text  # the raw line
        else:
            assert inp == str(run["tmp"] / text.split(",")[0])  # the resolved uri
    with open(outputs.rejected_path(run["eval"])) as f:
        assert f.read().splitlines() == ["line,input,reason,message"]


def test_nothing_written_exits_non_zero_and_still_accounts(run, tmp_path, capsys):
    (tmp_path / "bad.csv").write_text(
        f"{tmp_path / 'nope.jpg'},daisy\n{run['tmp'] / 'notes.jpg'},roses\nno-label-here\n")
    argv = ["--input_path", str(tmp_path / "bad.csv"), "--input_dict", str(run["tmp"] / "dict.txt"),
            "--output_path", str(tmp_path / "out" / "bad"), "--backbone", BACKBONE]
    assert preprocess.main(argv) == 1
    assert "no image could be embedded" in capsys.readouterr().err
    meta = records.read_metadata(str(tmp_path / "out" / "bad"))
    assert meta["counts"] == {"read": 3, "written": 0,
                              "rejected": {"malformed_row": 1, "missing_file": 1, "not_an_image": 1}}


def test_bad_arguments_fail_before_any_pipeline(run, tmp_path, capsys):
    common = ["--input_dict", str(run["tmp"] / "dict.txt"), "--backbone", BACKBONE]
    with pytest.raises(SystemExit) as e:  # two inputs, one output
        preprocess.main(["--input_path", "a.csv,b.csv", "--output_path", str(tmp_path / "x"), *common])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        preprocess.main(["--input_path", "a.csv", "--output_path", "x", "--cloud", *common])
    assert "--cloud needs --project, --region, --temp_location" in capsys.readouterr().err
    missing_csv = ["--input_path", str(tmp_path / "none.csv"), "--output_path", str(tmp_path / "x")]
    assert preprocess.main([*missing_csv, *common]) == 2
    assert not (tmp_path / "x.metadata.json").exists()


def test_cloud_options_point_dataflow_at_the_preprocess_image(monkeypatch):
    monkeypatch.delenv("FLOWERS_IMAGE_REPO", raising=False)
    monkeypatch.delenv("FLOWERS_IMAGE_TAG", raising=False)
    args = options.parse_args(["--input_path", "gs://b/train.csv", "--input_dict", "gs://b/dict.txt",
                                  "--output_path", "gs://b/out/train", "--cloud", "--project", "p",
                                  "--region", "europe-west1", "--temp_location", "gs://b/tmp",
                                  "--max_num_workers", "4"])
    opts = args.options.get_all_options()
    assert opts["runner"] == "DataflowRunner"
    image = f"europe-west1-docker.pkg.dev/p/flowers/preprocess:{flowers.__version__}"
    assert opts["sdk_container_image"] == image
    assert opts["sdk_location"] == "container" and opts["max_num_workers"] == 4
    local = options.parse_args(["--input_path", "a", "--input_dict", "d", "--output_path", "o"])
    assert local.options.get_all_options()["runner"] == "FnApiRunner"  # never the Prism download


def test_multi_process_runner_writes_the_same_records_as_one_worker(run, tmp_path):
    """Beam's multi-process direct runner, 2 workers (each loads the backbone, the pool threads
    decode ahead in each): the same records, rejects and counts as the single-worker run."""
    prefixes = [str(tmp_path / "train"), str(tmp_path / "eval")]
    argv = ["--input_path", f"{run['tmp'] / 'train.csv'},{run['tmp'] / 'eval.csv'}",
            "--input_dict", str(run["tmp"] / "dict.txt"), "--output_path", ",".join(prefixes),
            "--backbone", BACKBONE, "--max_pixels", str(MAX_PIXELS),
            "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    assert preprocess.main(argv) == 0
    for split, prefix in zip(("train", "eval"), prefixes):
        want, got = read_records(run[split]), read_records(prefix)
        assert sorted(got) == sorted(want)
        for uri, (embedding, labels) in want.items():
            assert got[uri][1] == labels
            # Batches differ between the runs; oneDNN may then round differently in the last bits.
            np.testing.assert_allclose(got[uri][0], embedding, atol=1e-5, rtol=0)
        with open(outputs.rejected_path(run[split])) as a, open(outputs.rejected_path(prefix)) as b:
            # line, input, reason (a decoder message names a per-process TF function: not compared)
            assert sorted(r[:3] for r in csv.reader(a)) == sorted(r[:3] for r in csv.reader(b))
        meta, want_meta = records.read_metadata(prefix), records.read_metadata(run[split])
        assert meta["counts"] == want_meta["counts"]
