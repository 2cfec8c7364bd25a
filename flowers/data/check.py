"""`flowers data check`: every bad row of a CSV, with the same reasons preprocess would give."""
from flowers.core import images, storage
from flowers.core.rejection import Rejection
from flowers.data import rows as csv_rows


def check(csv_path, dict_path, max_pixels=images.DEFAULT_MAX_PIXELS):
    """Every bad row as (line, uri, reason, message), and the number of rows."""
    label_ids = {label: i for i, label in enumerate(csv_rows.read_dict(dict_path))}
    rows, rejected = csv_rows.read_rows(csv_path, label_ids)
    problems = [(line, "", e.reason, str(e)) for line, _, e in rejected]
    duplicates = csv_rows.duplicate_lines(csv_rows.read_lines(csv_path), storage.dirname(csv_path))
    for row in rows:
        if row.line in duplicates:
            uri, first = duplicates[row.line]
            problems.append((row.line, uri, "duplicate", f"same uri as line {first}"))
            continue
        try:
            images.read_image(row.uri, max_pixels)
        except Rejection as e:
            problems.append((row.line, row.uri, e.reason, str(e)))
    return sorted(problems), len(rows) + len(rejected)
