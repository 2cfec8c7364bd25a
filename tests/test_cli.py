"""The `flowers` command line as a user meets it: one-line errors (no traceback), no library noise,
the flags' conventions, and the "wrong place, silently" defaults (deploy's base path, the server
polling models.config, `versions --server`). Commands run as real child processes."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import flowers
from flowers import testing

ROOT = pathlib.Path(__file__).resolve().parents[1]


def flowers_cli(*args, cwd=None, env=None):
    """Run `python -m flowers ARGS` as a user would (TF's log level not preset)."""
    child_env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    child_env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "flowers", *args], capture_output=True, text=True,
                          cwd=cwd, env={**child_env, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def deployed(exported_model, tmp_path_factory):
    """`flowers deploy` of the exported model to a relative base path, run from another folder."""
    work = tmp_path_factory.mktemp("deployed")
    run = flowers_cli("deploy", "--model_dir", exported_model["base_path"], "--model_base_path", "models/flowers",
                      cwd=work)
    assert run.returncode == 0, run.stderr
    return {"work": work, "config": work / "models" / "models.config", "base": work / "models" / "flowers",
            "run": run, "model": exported_model}


def one_error_line(run):
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert len(lines) == 1, lines
    return lines[0]


# (command, what the line must name). Each is a mistake a user makes on the README's journey.
ERRORS = {
    "data import, missing folder": (["data", "import", "/no/such/photos", "--output", "OUT"], "/no/such/photos"),
    "data check, missing dict": (["data", "check", "--input_path", "CSV", "--input_dict", "/no/dict.txt"],
                                 "/no/dict.txt"),
    "data check, missing csv": (["data", "check", "--input_path", "/no/train.csv", "--input_dict", "DICT"],
                                "/no/train.csv"),
    "data check, comma-separated csvs": (["data", "check", "--input_path", "/a.csv,/b.csv", "--input_dict", "DICT"],
                                         "one CSV"),
    "data import, --eval_fraction 1.5": (["data", "import", "PHOTOS", "--output", "OUT", "--eval_fraction", "1.5"],
                                         "between 0 and 1"),
    "data import, --eval-fraction 0": (["data", "import", "PHOTOS", "--output", "OUT", "--eval-fraction", "0"],
                                       "between 0 and 1"),
    "batch-predict, wrong model dir": (["batch-predict", "--input_path", "CSV", "--output_path", "OUT/p",
                                        "--model_dir", "/no/model"], "/no/model"),
    "batch-predict, misspelt flag": (["batch-predict", "--input_path", "CSV", "--output_path", "OUT/p",
                                      "--model_dir", "/no/model", "--labl", "stable"], "--labl stable"),
    "preprocess, misspelt Beam option": (["preprocess", "--input_path", "CSV", "--input_dict", "DICT",
                                          "--output_path", "OUT/t", "--temp_locaton", "gs://b/tmp"], "--temp_locaton"),
    "predict, URL without scheme": (["predict", "IMG", "--server", "localhost:8501"], "http://localhost:8501"),
    "predict, unreachable server": (["predict", "IMG", "--server", "http://127.0.0.1:PORT"],
                                    "is flowers serve running at http://127.0.0.1:PORT?"),
    "versions, unreachable server": (["versions", "list", "--model_config_file", "CONFIG", "--server",
                                      "http://127.0.0.1:PORT"], "is flowers serve running at http://127.0.0.1:PORT?"),
    "versions, missing config": (["versions", "list", "--model_config_file", "/no/models.config"],
                                 "/no/models.config"),
    "unknown command": (["preprocesss"], "unknown command"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_a_mistake_gets_one_line_naming_what_is_wrong(case, deployed, photos, photos_root, tmp_path):
    args, expected = ERRORS[case]
    port = str(testing.free_port())
    csv = tmp_path / "images.csv"
    csv.write_text(f"{photos['daisy'][0]},daisy\n")
    (tmp_path / "dict.txt").write_text("daisy\n")
    values = {"CSV": str(csv), "DICT": str(tmp_path / "dict.txt"), "OUT": str(tmp_path / "out"),
              "PHOTOS": photos_root, "IMG": photos["daisy"][0], "CONFIG": str(deployed["config"])}
    args = [re.sub(r"PORT", port, values.get(a, a).replace("OUT", str(tmp_path / "out"))) for a in args]
    line = one_error_line(flowers_cli(*args))
    assert expected.replace("PORT", port) in line, line


def test_versions_list_prints_its_table_and_nothing_from_tensorflow(deployed):
    run = flowers_cli("versions", "list", "--model_config_file", str(deployed["config"]))
    assert run.returncode == 0 and run.stderr == "", run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("model flowers") and len(lines) == 3, lines
    assert re.match(r"\s+1\s+yes\s+\d\.\d{3}\s+\d{4}-\d\d-\d\dT\S+\s+stable$", lines[2]), lines[2]
    probe = subprocess.run([sys.executable, "-c", "import sys; from flowers import cli; "
                            f"cli.main(['versions', 'list', '--model_config_file', {str(deployed['config'])!r}]); "
                            "print('tensorflow' in sys.modules)"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert probe.stdout.splitlines()[-1] == "False"  # never imported: nothing to log
    listing = json.loads(flowers_cli("versions", "list", "--model_config_file", str(deployed["config"]),
                                     "--format", "json").stdout)
    assert [(v["version"], v["labels"]) for v in listing["versions"]] == [(1, ["stable"])]
    assert isinstance(listing["versions"][0]["accuracy"], float)


def test_data_help_and_version_start_without_tensorflow():
    probe = subprocess.run([sys.executable, "-c", "import sys, contextlib, io; from flowers import cli\n"
                            "with contextlib.redirect_stdout(io.StringIO()):\n"
                            "    for a in (['--version'], ['data', 'import', '--help']):\n"
                            "        try: cli.main(a)\n"
                            "        except SystemExit: pass\n"
                            "print('tensorflow' in sys.modules)"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert probe.stdout.strip() == "False", probe.stderr
    assert flowers_cli("--version").stdout.strip() == f"flowers {flowers.__version__}"
    help_text = flowers_cli("data", "import", "--help").stdout
    assert "--eval_fraction" in help_text and "(default: 0.1)" in help_text
    assert "--eval-fraction" not in help_text  # the other spelling works, hidden


def test_deploy_writes_an_absolute_base_path_so_a_server_elsewhere_finds_it(deployed, tmp_path):
    text = deployed["config"].read_text()
    assert f'base_path: "{deployed["base"]}"' in text, text
    assert "next: flowers versions list" in deployed["run"].stdout
    # served from another working directory, the config still names the right folder
    with testing.running(["--model_config_file", str(deployed["config"])]) as (rest, _):
        run = flowers_cli("predict", deployed["model"]["held_out"]["daisy"][0], "--server", rest, cwd=tmp_path)
    assert run.returncode == 0 and "stable -> version 1" in run.stderr, run.stderr


def test_readme_and_demo_serve_commands_poll_models_config():
    readme = (ROOT / "README.md").read_text()
    serve_commands = re.findall(r"^flowers serve .*?(?<!\\)$", readme, re.M | re.S)
    assert serve_commands and all("--model_config_file_poll_wait_seconds" in c for c in serve_commands)
    assert "--model_config_file_poll_wait_seconds" in (ROOT / "flowers" / "demo.py").read_text()


def test_set_default_with_server_waits_until_the_server_serves_it(deployed, tmp_path):
    """With the README's polling server, `versions set-default 2 --server URL` returns once the
    server's stable label answers version 2; a server that never re-reads the config is named."""
    work = tmp_path / "w"
    work.mkdir()
    model = deployed["model"]
    assert flowers_cli("deploy", "--model_dir", model["base_path"], "--model_base_path", "models/flowers",
                       cwd=work).returncode == 0
    assert flowers_cli("deploy", "--model_dir", model["base_path"], "--model_base_path", "models/flowers",
                       "--label", "canary", cwd=work).returncode == 0
    config = str(work / "models" / "models.config")
    with testing.running(["--model_config_file", config, "--model_config_file_poll_wait_seconds", "0.5"]) as (rest, _):
        run = flowers_cli("versions", "set-default", "2", "--model_config_file", config, "--server", rest)
        assert run.returncode == 0, run.stderr
        assert f"{rest}: stable -> version 2 (AVAILABLE" in run.stdout
        listing = flowers_cli("versions", "list", "--model_config_file", config, "--server", rest, "--format", "json")
        states = {v["version"]: (v["labels"], v["server_state"]) for v in json.loads(listing.stdout)["versions"]}
        assert states == {1: (["previous"], "AVAILABLE"), 2: (["stable"], "AVAILABLE")}
    with testing.running(["--model_config_file", config]) as (rest, _):  # TF Serving's default: read once
        run = flowers_cli("versions", "rollback", "--model_config_file", config, "--server", rest,
                          "--wait_seconds", "3")
        assert run.returncode == 1 and "stable -> version 1" in run.stdout  # the config did change
        assert "--model_config_file_poll_wait_seconds" in run.stderr and len(run.stderr.splitlines()) == 1


def test_preprocess_process_ends_without_teardown_yet_loses_nothing(photos, tmp_path):
    """`flowers preprocess` ends its process with os._exit (skipping ~1 s of interpreter teardown):
    its output must still be complete (every line flushed through a pipe, every record written and
    the gzip stream closed) and its exit code the command's own, success or failure."""
    (tmp_path / "dict.txt").write_text("daisy\nroses\n")
    (tmp_path / "train.csv").write_text("".join(f"{p},daisy\n" for p in photos["daisy"][:3]))
    (tmp_path / "eval.csv").write_text(f"{photos['roses'][0]},roses\n")
    (tmp_path / "bad.csv").write_text(f"{tmp_path / 'missing.jpg'},daisy\n")
    base = ["preprocess", "--input_dict", str(tmp_path / "dict.txt"), "--backbone", "efficientnet_lite0"]

    run = flowers_cli(*base, "--input_path", f"{tmp_path / 'train.csv'},{tmp_path / 'eval.csv'}",
                      "--output_path", f"{tmp_path / 'out' / 'train'},{tmp_path / 'out' / 'eval'}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.rstrip().splitlines()[-1].startswith("next: flowers train --train_data_paths")
    written = {}
    for split in ("train", "eval"):
        files = list((tmp_path / "out").glob(f"{split}-*.tfrecord.gz"))
        written[split] = sum(1 for _ in tf_records(files))  # reads each gzip stream to its end
    assert written == {"train": 3, "eval": 1}

    failed = flowers_cli(*base, "--input_path", str(tmp_path / "bad.csv"), "--output_path", str(tmp_path / "bad"))
    assert failed.returncode == 1
    assert "no image could be embedded" in failed.stderr


def tf_records(files):
    import tensorflow as tf

    return tf.data.TFRecordDataset([str(f) for f in files], compression_type="GZIP").as_numpy_iterator()
