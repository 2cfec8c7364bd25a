"""The evaluation people can open: a self-contained report.html and confusion_matrix.png.

Reads what a training run writes in its output folder (or an export's assets.extra/):
metrics.json (accuracy, per_class, confusion_matrix, labels, optional "history") and
eval_predictions.jsonl (one {"uri", "labels", "predicted", "scores"} per eval example).
Either extra may be missing (older exports): its section is left out, never a crash.
The console (flowers.console) reads the same files through `load` and `thumbnail`.
"""
import base64
import html
import io
import json

from PIL import Image, ImageDraw, ImageFont

from flowers.core import defaults, storage

CONFUSION_PNG = "confusion_matrix.png"
MISTAKES = 12  # most confident mistakes shown
THUMBNAIL = 128  # px, longest side
CELL = 56  # px per confusion-matrix cell in the PNG
CURVES = (("loss", "train_loss", "eval_loss"), ("accuracy", "train_accuracy", "eval_accuracy"))


def load(folder):
    """(metrics dict, eval predictions list); predictions [] when the file is missing."""
    metrics = json.loads(storage.read_text(storage.join(folder, defaults.METRICS_FILE)))
    path = storage.join(folder, defaults.EVAL_PREDICTIONS_FILE)
    if not storage.exists(path):
        return metrics, []
    return metrics, [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def f1(precision, recall):
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def per_class_rows(metrics):
    """[(label, precision, recall, f1, support)] in label order."""
    return [(label, m["precision"], m["recall"], f1(m["precision"], m["recall"]), m["support"])
            for label, m in metrics["per_class"].items()]


def top_score(prediction, labels):
    """The score of the predicted label (scores are in dict order)."""
    scores = prediction.get("scores") or []
    i = labels.index(prediction["predicted"]) if prediction["predicted"] in labels else -1
    return float(scores[i]) if 0 <= i < len(scores) else 0.0


def confident_mistakes(predictions, labels, n=MISTAKES):
    """Wrong predictions (predicted is none of the true labels), most confident first."""
    wrong = [p for p in predictions if p["predicted"] not in p["labels"]]
    return sorted(wrong, key=lambda p: -top_score(p, labels))[:n]


def thumbnail(uri, size=THUMBNAIL):
    """JPEG bytes of a photo shrunk to SIZE px, or None when it cannot be read."""
    try:
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            im = im.convert("RGB")
            im.thumbnail((size, size))
            out = io.BytesIO()
            im.save(out, "JPEG", quality=80)
            return out.getvalue()
    except Exception:  # noqa: BLE001 - a missing or corrupt photo only loses its thumbnail
        return None


def confusion_png(confusion):
    """PNG bytes: rows true, columns predicted, shaded by the row's share, counts written in."""
    labels, matrix = confusion["labels"], confusion["matrix"]
    font = ImageFont.load_default(13)
    margin = max((font.getbbox(label)[2] for label in labels), default=0) + 16
    n = len(labels)
    width, height = margin + max(n * CELL, 240) + 8, margin + n * CELL + 28
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        for j, count in enumerate(row):
            share = count / total
            color = (int(255 - 200 * share), int(255 - 120 * share), 255) if i == j else \
                (255, int(255 - 170 * share), int(255 - 170 * share))
            box = (margin + j * CELL, margin + i * CELL, margin + (j + 1) * CELL, margin + (i + 1) * CELL)
            draw.rectangle(box, fill=color, outline=(200, 200, 200))
            draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), str(count), fill="black", font=font,
                      anchor="mm")
    for k, label in enumerate(labels):
        draw.text((margin - 8, margin + k * CELL + CELL / 2), label, fill="black", font=font, anchor="rm")
        column = Image.new("RGBA", (margin, CELL), (255, 255, 255, 0))
        ImageDraw.Draw(column).text((margin - 8, CELL / 2), label, fill="black", font=font, anchor="rm")
        column = column.rotate(-90, expand=True)  # reads top to bottom above its column
        image.paste(column, (margin + k * CELL, 0), column)
    draw.text((margin, height - 20), "rows: true label, columns: predicted", fill="gray", font=font)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def curves_svg(history, metric, train_key, eval_key, width=420, height=220):
    """One inline SVG chart of train and eval curves against steps; '' without data."""
    steps = history.get("steps") or []
    series = [(name, history.get(key) or [], color) for name, key, color in
              (("train", train_key, "#1f77b4"), ("eval", eval_key, "#ff7f0e"))]
    series = [(name, values, color) for name, values, color in series if len(values) == len(steps) and values]
    if not steps or not series:
        return ""
    pad = 36
    lo = min(min(v) for _, v, _ in series)
    hi = max(max(v) for _, v, _ in series)
    lo, hi = (lo - 0.5, hi + 0.5) if hi == lo else (lo, hi)
    first, last = steps[0], steps[-1] if steps[-1] != steps[0] else steps[0] + 1

    def xy(step, value):
        return (pad + (step - first) / (last - first) * (width - 2 * pad),
                height - pad - (value - lo) / (hi - lo) * (height - 2 * pad))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="curve">',
             f'<text x="{pad}" y="16" font-size="13">{html.escape(metric)}</text>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>',
             f'<text x="2" y="{pad + 4}" font-size="10">{hi:.3g}</text>',
             f'<text x="2" y="{height - pad}" font-size="10">{lo:.3g}</text>',
             f'<text x="{width - pad}" y="{height - 8}" font-size="10" text-anchor="end">step {last}</text>']
    for k, (name, values, color) in enumerate(series):
        points = " ".join("%.1f,%.1f" % xy(s, v) for s, v in zip(steps, values))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        parts.append(f'<text x="{width - pad - 60}" y="{16 + 14 * k}" font-size="11" fill="{color}">'
                     f'{name}</text>')
    return "".join(parts + ["</svg>"])


def _data_uri(mime, data):
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


STYLE = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}
td:first-child{text-align:left}.mistakes{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:140px;font-size:12px}figure img{max-width:128px;max-height:128px}"""


def render(metrics, predictions, confusion_image):
    """The report's HTML text (everything inline)."""
    esc = html.escape
    labels = metrics.get("labels") or metrics["confusion_matrix"]["labels"]
    summary = ", ".join(f"{key} {metrics[key]:.4g}" if isinstance(metrics[key], float) else f"{key} {metrics[key]}"
                        for key in ("accuracy", "loss", "train_accuracy", "steps", "backbone") if key in metrics)
    rows = "".join(f"<tr><td>{esc(label)}</td><td>{p:.3f}</td><td>{r:.3f}</td><td>{f:.3f}</td><td>{s}</td></tr>"
                   for label, p, r, f, s in per_class_rows(metrics))
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>flowers evaluation</title>",
           f"<style>{STYLE}</style></head><body><h1>Evaluation</h1><p>{esc(summary)}</p>",
           "<h2>Confusion matrix</h2>",
           f"<img alt='confusion matrix' src='{_data_uri('image/png', confusion_image)}'>",
           "<h2>Per class</h2><table class='per-class'><tr><th>label</th><th>precision</th><th>recall</th>"
           f"<th>F1</th><th>support</th></tr>{rows}</table>"]
    history = metrics.get("history") or {}
    charts = "".join(curves_svg(history, *curve) for curve in CURVES)
    out.append(f"<h2>Training curves</h2>{charts}" if charts else
               "<h2>Training curves</h2><p>No training history in metrics.json.</p>")
    mistakes = confident_mistakes(predictions, labels)
    if predictions:
        out.append("<h2>Most confident mistakes</h2><div class='mistakes'>")
        for p in mistakes:
            thumb = thumbnail(p["uri"])
            img = f"<img alt='' src='{_data_uri('image/jpeg', thumb)}'>" if thumb else "<i>photo unreadable</i>"
            out.append(f"<figure>{img}<figcaption>{esc(', '.join(p['labels']))} &rarr; "
                       f"<b>{esc(p['predicted'])}</b> {top_score(p, labels):.2f}<br>"
                       f"<small>{esc(p['uri'].rsplit('/', 1)[-1])}</small></figcaption></figure>")
        out.append("</div>" + ("" if mistakes else "<p>No mistakes on the eval set.</p>"))
    return "".join(out + ["</body></html>\n"])


def write_evaluation(folder, export_path, result, predictions):
    """metrics.json (`result`), eval_predictions.jsonl (`predictions`, its text) and report.html in
    FOLDER and in the export's assets.extra/, where the deploy gate and the console read them."""
    files = {defaults.METRICS_FILE: json.dumps(result, indent=2) + "\n", defaults.EVAL_PREDICTIONS_FILE: predictions}
    for name, text in files.items():
        storage.write_text(storage.join(folder, name), text)
        storage.write_text(storage.join(export_path, "assets.extra", name), text)
    write_report(folder)  # report.html + confusion_matrix.png from the files above
    storage.gfile.copy(storage.join(folder, defaults.REPORT_FILE),
                       storage.join(export_path, "assets.extra", defaults.REPORT_FILE), overwrite=True)


def write_report(folder):
    """FOLDER/report.html and FOLDER/confusion_matrix.png from FOLDER's eval files; returns the report's path."""
    metrics, predictions = load(folder)
    image = confusion_png(metrics["confusion_matrix"])
    with storage.gfile.GFile(storage.join(folder, CONFUSION_PNG), "wb") as f:
        f.write(image)
    path = storage.join(folder, defaults.REPORT_FILE)
    storage.write_text(path, render(metrics, predictions, image))
    return path


def log_to_kfp(folder, metrics_artifact, html_artifact):
    """The pipeline's evaluate step: per-class precision/recall/F1 as KFP Metrics, the report as HTML."""
    metrics, _ = load(folder)
    for label, p, r, f, _support in per_class_rows(metrics):
        for name, value in (("precision", p), ("recall", r), ("f1", f)):
            metrics_artifact.log_metric(f"{name}_{label}", float(value))
    report = storage.join(folder, defaults.REPORT_FILE)
    if storage.exists(report):
        text = storage.read_text(report)
    else:  # an older model folder: render here, without writing into the input artifact
        metrics, predictions = load(folder)
        text = render(metrics, predictions, confusion_png(metrics["confusion_matrix"]))
    storage.write_text(html_artifact.path, text)
