"""The evaluation report (flowers.train.report) and `flowers console` end to end: `flowers serve` and
`flowers console` on loopback, driven in Debian's headless Chromium by Playwright.

Eval files: the exported model's assets.extra/metrics.json comes from the trainer; its
eval_predictions.jsonl is made here by the served model over the held-out photos (the trainer
writes it after the merge with the trainer rework). Version 1 has no training history (an
older export), version 2 (the canary) has one."""
import asyncio
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image
from playwright.sync_api import expect

from flowers import testing
from flowers.core import defaults
from flowers.predict.client import RestClient
from flowers.train import report

CHROMIUM = "/usr/bin/chromium"
HISTORY = {"steps": [50, 100], "train_loss": [1.2, 0.6], "train_accuracy": [0.6, 0.9],
           "eval_loss": [1.3, 0.8], "eval_accuracy": [0.55, 0.8]}


def extra(base, version):
    return os.path.join(base, str(version), "assets.extra")


def eval_rows(client, held_out, labels, version):
    """The served model over the held-out photos: the eval_predictions.jsonl rows."""
    rows = []
    for label, paths in held_out.items():
        answers = client.predict([open(p, "rb").read() for p in paths], keys=paths, version=version)
        rows += [{"uri": a["key"], "labels": [label], "predicted": a["label"], "scores": a["scores"]}
                 for a in answers]
    assert all(len(r["scores"]) == len(labels) for r in rows)
    return rows


@pytest.fixture(scope="module")
def stack(exported_model, tmp_path_factory):
    """Versions 1 (stable) and 2 (canary) of the exported model, served, with eval files, and the
    console over them: {"console", "server", "base", "rows", "config"}."""
    work = tmp_path_factory.mktemp("console")
    base = work / "models" / "flowers"
    for version in (1, 2):
        shutil.copytree(exported_model["version_path"], base / str(version))
    args = testing.write_config_files(str(work), "flowers", str(base), labels={"stable": 1, "canary": 2},
                                      policy="all {}")
    with testing.running(args) as (rest_url, _grpc):
        rows = eval_rows(RestClient(rest_url), exported_model["held_out"], exported_model["labels"], 1)
        for version in (1, 2):
            with open(os.path.join(extra(base, version), defaults.EVAL_PREDICTIONS_FILE), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        metrics_path = os.path.join(extra(base, 2), defaults.METRICS_FILE)
        metrics = json.load(open(metrics_path))
        json.dump({**metrics, "history": HISTORY}, open(metrics_path, "w"))
        port = testing.free_port()
        log = open(work / "console.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "flowers", "console", "--server", rest_url,
                                 "--model_config_file", str(work / "models.config"), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
        console = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(console + "/", timeout=5).close()
                    break
                except (urllib.error.URLError, ConnectionError):
                    assert proc.poll() is None and time.monotonic() < deadline, (work / "console.log").read_text()
                    time.sleep(0.3)
            yield {"console": console, "server": rest_url, "base": str(base), "rows": rows, "work": work}
        finally:
            testing.stop_subprocess(proc)
            log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: `make install` installs Debian's chromium")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, stack, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)  # assertions on what the page fills in asynchronously
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.screenshot(path=str(tmp_path / "last.png"), full_page=True)
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def right_photo(stack, label=None):
    """A held-out photo the model gets right (its true label)."""
    for row in stack["rows"]:
        if row["predicted"] in row["labels"] and (label is None or row["predicted"] == label):
            return row["uri"], row["predicted"]
    pytest.fail("the model gets no held-out photo right")


# --- The report ----------------------------------------------------------------------------

def test_report_shows_matrix_table_curves_and_confident_mistakes(stack, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(extra(stack["base"], 2), folder)
    path = report.write_report(str(folder))
    text = open(path).read()
    metrics = json.load(open(folder / defaults.METRICS_FILE))
    for label, m in metrics["per_class"].items():
        assert f"<td>{label}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>" in text
    assert text.count("<svg") == 2 and "<polyline" in text  # loss and accuracy curves
    mistakes = [r for r in stack["rows"] if r["predicted"] not in r["labels"]]
    shown = min(len(mistakes), report.MISTAKES)
    assert text.count("<figure>") == shown and text.count("data:image/jpeg;base64,") == shown
    assert "src='http" not in text and "src=\"http" not in text  # self-contained
    with Image.open(folder / report.CONFUSION_PNG) as im:
        n = len(metrics["labels"])
        assert im.format == "PNG" and im.width > n * report.CELL and im.height > n * report.CELL


def test_report_of_an_older_export_has_no_curves_nor_mistakes(exported_model, tmp_path):
    folder = tmp_path / "old"  # an export from before the trainer wrote history and eval predictions
    shutil.copytree(os.path.join(exported_model["version_path"], "assets.extra"), folder)
    metrics = json.loads((folder / defaults.METRICS_FILE).read_text())
    metrics.pop("history", None)
    (folder / defaults.METRICS_FILE).write_text(json.dumps(metrics))
    (folder / defaults.EVAL_PREDICTIONS_FILE).unlink(missing_ok=True)
    text = open(report.write_report(str(folder))).read()
    assert "No training history" in text and "<svg" not in text and "<figure>" not in text
    assert "<table class='per-class'>" in text


def test_kfp_metrics_per_class_and_html_artifact(stack, tmp_path):
    from kfp.dsl import HTML, Metrics

    folder = tmp_path / "model"
    shutil.copytree(extra(stack["base"], 1), folder)
    (folder / defaults.REPORT_FILE).unlink(missing_ok=True)  # the trainer copies one in: make it build its own
    metrics, html = Metrics(uri=str(tmp_path / "metrics")), HTML(uri=str(tmp_path / "report.html"))
    report.log_to_kfp(str(folder), metrics, html)
    per_class = json.load(open(folder / defaults.METRICS_FILE))["per_class"]
    for label, m in per_class.items():
        assert metrics.metadata[f"precision_{label}"] == pytest.approx(m["precision"])
        assert metrics.metadata[f"recall_{label}"] == pytest.approx(m["recall"])
        assert metrics.metadata[f"f1_{label}"] == pytest.approx(report.f1(m["precision"], m["recall"]))
    assert "<h2>Confusion matrix</h2>" in open(tmp_path / "report.html").read()
    assert not (folder / defaults.REPORT_FILE).exists()  # the input artifact is left alone


# --- The console in a browser --------------------------------------------------------------

def test_try_it_labels_a_real_photo_and_shows_the_canary_beside_it(page, stack, tmp_path):
    photo, label = right_photo(stack)
    other = next(right_photo(stack, c) for c in {r["predicted"] for r in stack["rows"]} - {label}
                 if any(r["predicted"] == c and c in r["labels"] for r in stack["rows"]))
    page.goto(stack["console"] + "/#try")
    expect(page.locator("#target")).to_have_value("label:stable")  # filled in once /api/models answers
    page.set_input_files("#photos", [photo, other[0]])
    expect(page.get_by_test_id("top-label")).to_have_text(label)
    assert page.get_by_test_id("top-label").count() == 1
    expect(page.locator(".result").first.locator("h3")).to_have_text(["stable (version 1)", "canary (version 2)"])
    assert page.locator(".result").count() == 2 and page.locator(".result .bar").count() == 20  # top 5 per column
    assert page.locator(".result").nth(1).locator(".bar .label").first.inner_text() == other[1]
    page.screenshot(path=str(tmp_path / "try.png"), full_page=True)


def test_bad_uploads_show_a_clear_message_and_the_page_stays_usable(page, stack, tmp_path):
    page.goto(stack["console"] + "/#try")
    page.set_input_files("#photos", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    error = page.locator(".result .error").first
    expect(error).to_contain_text("notes.txt")
    expect(error).to_contain_text("not an image")
    big = b"\xff\xd8\xff" + bytes(11 << 20)
    page.set_input_files("#photos", files=[{"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": big}])
    expect(page.locator(".result .error").first).to_contain_text("too large")
    page.screenshot(path=str(tmp_path / "bad.png"), full_page=True)
    photo, label = right_photo(stack)
    page.set_input_files("#photos", photo)
    expect(page.get_by_test_id("top-label")).to_have_text(label)


def test_switching_to_the_canary_predicts_with_it(page, stack, tmp_path):
    photo, label = right_photo(stack)
    page.goto(stack["console"] + "/#try")
    page.select_option("#target", "label:canary")
    expect(page.locator("#canary-box")).to_be_hidden()
    page.set_input_files("#photos", photo)
    expect(page.get_by_test_id("top-label")).to_have_text(label)
    expect(page.locator(".result h3")).to_have_text(["canary (version 2)"])
    page.select_option("#target", "version:1")
    page.set_input_files("#photos", photo)
    expect(page.locator(".result h3").first).to_have_text("version 1")  # the canary's column beside it


def test_evaluate_confusion_matrix_gallery_and_threshold(page, stack, tmp_path):
    page.goto(stack["console"] + "/#evaluate")
    page.locator("#confusion button").first.wait_for()
    labels = json.load(open(os.path.join(extra(stack["base"], 1), defaults.METRICS_FILE)))["labels"]
    assert page.locator("#confusion button").count() == len(labels) ** 2
    expected = json.load(open(os.path.join(extra(stack["base"], 1), defaults.METRICS_FILE)))
    shown = [int(t) for t in page.locator("#confusion button").all_inner_texts()]
    assert shown == [c for row in expected["confusion_matrix"]["matrix"] for c in row]
    # A cell's gallery: exactly that cell's eval photos, loaded through the console.
    label = labels[0]
    in_cell = [r for r in stack["rows"] if r["predicted"] == label and label in r["labels"]]
    page.click(f"#confusion button[data-true='{label}'][data-predicted='{label}']")
    assert page.locator("#gallery-title").inner_text().endswith(f"{len(in_cell)} photo(s)")
    images = page.locator("#gallery-photos img")
    assert images.count() == len(in_cell)
    if in_cell:
        images.first.scroll_into_view_if_needed()
        page.wait_for_function("() => document.querySelector('#gallery-photos img').naturalWidth > 0")
    page.screenshot(path=str(tmp_path / "evaluate.png"), full_page=True)
    # At threshold 1 only saturated scores (1.0 in float32) are kept; recall counts the rest as missed.
    before = page.locator("#per-class .recall").all_inner_texts()
    assert before == [f"{expected['per_class'][l]['recall']:.3f}" for l in labels]
    page.locator("#threshold").fill("1")
    sure = [r for r in stack["rows"] if max(r["scores"]) >= 1.0]
    recall_at_1 = [sum(r["predicted"] == l for r in sure if l in r["labels"]) / sum(l in r["labels"] for r in stack["rows"])
                   for l in labels]
    expect(page.locator("#per-class .recall")).to_have_text([f"{r:.3f}" for r in recall_at_1])
    expect(page.locator("#eval-kept")).to_have_text(re.compile(rf"^{len(sure)} of"))
    # The canary's evaluation is there too.
    page.select_option("#eval-version", "2")
    page.wait_for_function("() => document.querySelector('#eval-summary').textContent.startsWith('Version 2')")


def test_versions_page_shows_server_and_config_side_by_side(page, stack, tmp_path):
    page.goto(stack["console"] + "/#versions")
    page.locator("#versions tr[data-version='2']").wait_for()
    for version, label in ((1, "stable"), (2, "canary")):
        cells = page.locator(f"#versions tr[data-version='{version}'] td").all_inner_texts()
        assert cells[:5] == [str(version), "AVAILABLE", label, label, "yes"], cells
        assert cells[5].endswith("%") and cells[6].startswith("20")
    assert "labels stable → 1, canary → 2" in page.locator("#config-facts").inner_text()
    page.screenshot(path=str(tmp_path / "versions.png"), full_page=True)


# --- What the console refuses ----------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/eval/1/photos/99999", "/api/eval/1/photos/-1", "/api/eval/7/photos/0",
                                  "/api/eval/1/photos/..%2F..%2Fmodels.config", "/static/..%2F..%2F__init__.py"])
def test_only_listed_eval_photos_are_served(stack, path):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(stack["console"] + path, timeout=30)
    assert e.value.code in (403, 404)
    with urllib.request.urlopen(stack["console"] + "/api/eval/1/photos/0", timeout=30) as ok:
        assert ok.headers["Content-Type"] == "image/jpeg"


@pytest.mark.parametrize("query,body,content_type,message", [
    ("", b'{"instances": []}', "application/json", "multipart/form-data"),
    ("", b"--x--\r\n", "multipart/form-data", "boundary"),
    ("?target=bogus", b"--x\r\nContent-Disposition: form-data; name=photos; filename=a.jpg\r\n\r\nx\r\n--x--\r\n",
     "multipart/form-data; boundary=x", "unknown target"),
    ("", b"--x--\r\n", "multipart/form-data; boundary=x", "no photos"),
])
def test_malformed_uploads_get_a_400_with_the_reason(stack, query, body, content_type, message):
    request = urllib.request.Request(stack["console"] + "/api/predict" + query, data=body, method="POST",
                                     headers={"Content-Type": content_type})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=60)
    assert e.value.code == 400 and message in json.loads(e.value.read())["error"]


def test_an_unreachable_server_is_reported_not_a_crash(stack):
    from aiohttp.test_utils import TestClient, TestServer

    from flowers.console import app as console

    async def check():
        client = TestClient(TestServer(console.make_app(f"http://127.0.0.1:{testing.free_port()}")))
        await client.start_server()
        try:
            state = await (await client.get("/api/models")).json()
            assert "unreachable" in state["server_error"] and state["targets"] == []
        finally:
            await client.close()

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, check()).result()
