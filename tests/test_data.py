"""Data import (folder tree -> CSVs) and data check, on the shared photos."""
import codecs
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from flowers.core.rejection import Rejection
from flowers.data import check, importer, rows


def read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_import_is_stratified_and_deterministic(photos, photos_root, tmp_path):
    labels, n_train, n_eval = importer.import_tree(photos_root, str(tmp_path / "a"), eval_fraction=0.1, seed=7)
    assert labels == sorted(photos) == rows.read_dict(str(tmp_path / "a" / "dict.txt"))
    assert n_train + n_eval == sum(len(v) for v in photos.values())
    evals = read_csv(tmp_path / "a" / "eval_set.csv")
    for label, paths in photos.items():
        n = sum(1 for _, lab in evals if lab == label)
        assert n == round(len(paths) * 0.1)
    train = read_csv(tmp_path / "a" / "train_set.csv")
    assert not {u for u, _ in train} & {u for u, _ in evals}

    importer.import_tree(photos_root, str(tmp_path / "b"), eval_fraction=0.1, seed=7)
    importer.import_tree(photos_root, str(tmp_path / "c"), eval_fraction=0.1, seed=8)
    assert read_csv(tmp_path / "b" / "eval_set.csv") == evals
    assert read_csv(tmp_path / "c" / "eval_set.csv") != evals


def test_check_reports_every_kind_of_bad_row(photos, tmp_path):
    good = photos["roses"][:3]
    shutil.copy(good[0], tmp_path / "relative.jpg")
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "dict.txt").write_text("daisy\nroses\n")
    rows = [
        f"{good[1]},roses",
        f"{good[2]},roses,daisy",        # several labels
        "relative.jpg,roses",            # relative to the CSV's folder
        f"{good[1]},roses",              # duplicate
        f"{good[0]},orchids",            # unknown label
        f"{tmp_path}/missing.jpg,daisy",  # missing file
        "notes.jpg,daisy",               # unreadable
        "just-a-uri",                    # malformed
    ]
    (tmp_path / "set.csv").write_text("\n".join(rows) + "\n")
    problems, n_rows = check.check(str(tmp_path / "set.csv"), str(tmp_path / "dict.txt"))
    assert n_rows == 8
    assert [(line, reason) for line, _, reason, _ in problems] == [
        (4, "duplicate"), (5, "unknown_label"), (6, "missing_file"), (7, "not_an_image"), (8, "malformed_row")]

    result = subprocess.run([sys.executable, "-m", "flowers", "data", "check", "--input_path",
                             str(tmp_path / "set.csv"), "--input_dict", str(tmp_path / "dict.txt")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "8 rows, 3 ok, 5 bad" in result.stdout


def test_check_passes_an_imported_set(photos_root, tmp_path):
    subprocess.run([sys.executable, "-m", "flowers", "data", "import", photos_root, "--output", str(tmp_path),
                    "--eval-fraction", "0.05"], check=True, capture_output=True)
    result = subprocess.run([sys.executable, "-m", "flowers", "data", "check", "--input_path",
                             str(tmp_path / "eval_set.csv"), "--input_dict", str(tmp_path / "dict.txt")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert " 0 bad (none)" in result.stdout


def test_parse_row_labels_to_ids():
    row = rows.parse_row(3, "gs://bucket/a.jpg,tulips,daisy", "/tmp", {"daisy": 0, "tulips": 1})
    assert row.uri == "gs://bucket/a.jpg" and row.label_ids == (1, 0) and row.line == 3
    with pytest.raises(Rejection) as e:
        rows.parse_row(1, "a.jpg,", "/tmp", {"daisy": 0})
    assert e.value.reason == "malformed_row"


def check_in_child(csv_path, dict_path, timeout_s=120):
    """`data check` in a child process, so a hang (a FIFO read) fails the test instead of stalling it."""
    code = ("import json, sys; from flowers.data import check\n"
            "problems, n = check.check(sys.argv[1], sys.argv[2])\n"
            "print(json.dumps([n, [[line, reason] for line, _, reason, _ in problems]]))\n")
    done = subprocess.run([sys.executable, "-c", code, str(csv_path), str(dict_path)],
                          capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-2000:]
    n, problems = json.loads(done.stdout.splitlines()[-1])
    return n, [tuple(p) for p in problems]


def test_fifo_bom_latin1_and_duplicates_are_rows_rejected_alone(photos, tmp_path):
    """A FIFO is refused unopened (reading it would block forever); a BOM in dict.txt and in the
    CSV changes nothing; a Latin-1 line is one malformed row; a repeated image is a duplicate."""
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "dict.txt").write_bytes(codecs.BOM_UTF8 + b"daisy\nroses\n")
    daisy, roses = photos["daisy"][0], photos["roses"][0]
    lines = [f"{daisy},daisy".encode(),         # first row, right after the BOM
             b"pipe.jpg,daisy",                 # a FIFO
             "caf\xe9.jpg,roses".encode("latin-1"),  # not UTF-8
             f"{roses},roses".encode(),
             f"{os.path.dirname(roses)}/./{os.path.basename(roses)},roses".encode()]  # same image again
    (tmp_path / "set.csv").write_bytes(codecs.BOM_UTF8 + b"\n".join(lines) + b"\n")
    n, problems = check_in_child(tmp_path / "set.csv", tmp_path / "dict.txt")
    assert n == 5
    assert problems == [(2, "not_a_file"), (3, "malformed_row"), (5, "duplicate")]
