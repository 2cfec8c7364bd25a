"""The lab's inputs: dict.txt (line index = label id) and `uri,label[,label...]` CSVs.

`flowers data import DIR --output OUT` turns a folder-per-class tree into them;
`flowers data check` reports bad rows.
"""
import argparse
import collections
import csv
import dataclasses
import io
import random
import sys

from flowers import images, storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


@dataclasses.dataclass(frozen=True)
class Row:
    line: int  # 1-based line in the CSV
    uri: str  # resolved: gs://..., or an absolute path
    labels: tuple


class RowError(ValueError):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def read_dict(path):
    labels = [line.strip() for line in storage.read_text(path).splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"{path}: no labels")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path}: duplicate labels")
    return labels


def parse_row(line_no, line, base_dir, label_ids):
    """One CSV line -> (Row, label ids); raises RowError('malformed_row'|'unknown_label')."""
    try:
        fields = next(csv.reader([line]))
    except (csv.Error, StopIteration) as e:
        raise RowError("malformed_row", f"line {line_no}: unparseable CSV ({e})") from e
    fields = [f.strip() for f in fields]
    if len(fields) < 2 or not fields[0] or not all(fields[1:]):
        raise RowError("malformed_row", f"line {line_no}: expected uri,label[,label...]; got {line!r}")
    uri, labels = fields[0], tuple(fields[1:])
    unknown = [label for label in labels if label not in label_ids]
    if unknown:
        raise RowError("unknown_label", f"line {line_no}: unknown label(s) {', '.join(unknown)}")
    row = Row(line_no, storage.resolve(uri, base_dir), labels)
    return row, [label_ids[label] for label in labels]


def read_lines(csv_path):
    """(1-based line number, text) for each non-blank line."""
    text = storage.read_text(csv_path)
    return [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def stratified_split(tree, eval_fraction, seed):
    """{label: [paths]} -> (train, eval) lists of (path, label), deterministic for a seed."""
    rng = random.Random(seed)
    train, evals = [], []
    for label in sorted(tree):
        paths = sorted(tree[label])
        rng.shuffle(paths)
        n_eval = round(len(paths) * eval_fraction)
        if eval_fraction > 0 and len(paths) > 1:
            n_eval = min(max(n_eval, 1), len(paths) - 1)
        evals += [(p, label) for p in paths[:n_eval]]
        train += [(p, label) for p in paths[n_eval:]]
    return train, evals


def scan_tree(root):
    tree = {}
    for name in storage.listdir(root):
        folder = storage.join(root, name)
        if storage.isdir(folder):
            files = [storage.join(folder, f) for f in storage.listdir(folder)
                     if f.lower().endswith(IMAGE_EXTENSIONS)]
            if files:
                tree[name] = files
    if not tree:
        raise ValueError(f"{root}: no class folders with images")
    return tree


def _write_csv(path, rows):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    storage.write_text(path, buf.getvalue())


def import_tree(root, output, eval_fraction=0.1, seed=0):
    """Write OUT/train_set.csv, OUT/eval_set.csv, OUT/dict.txt; returns (labels, n_train, n_eval)."""
    root = root if storage.is_remote(root) else storage.dirname(storage.join(root, "x"))
    tree = scan_tree(root)
    train, evals = stratified_split(tree, eval_fraction, seed)
    labels = sorted(tree)
    storage.write_text(storage.join(output, "dict.txt"), "".join(f"{label}\n" for label in labels))
    _write_csv(storage.join(output, "train_set.csv"), train)
    _write_csv(storage.join(output, "eval_set.csv"), evals)
    return labels, len(train), len(evals)


def check(csv_path, dict_path, max_pixels=images.DEFAULT_MAX_PIXELS):
    """Every bad row as (line, uri, reason, message), and the number of rows."""
    label_ids = {label: i for i, label in enumerate(read_dict(dict_path))}
    base_dir = storage.dirname(csv_path)
    problems, seen = [], {}
    lines = read_lines(csv_path)
    for line_no, line in lines:
        try:
            row, _ = parse_row(line_no, line, base_dir, label_ids)
        except RowError as e:
            problems.append((line_no, "", e.reason, str(e)))
            continue
        if row.uri in seen:
            problems.append((line_no, row.uri, "duplicate", f"same uri as line {seen[row.uri]}"))
            continue
        seen[row.uri] = line_no
        try:
            images.probe(storage.read_bytes(row.uri), max_pixels)
        except images.ImageError as e:
            problems.append((line_no, row.uri, e.reason, str(e)))
        except Exception as e:  # noqa: BLE001 - any read failure is a missing file
            problems.append((line_no, row.uri, "missing_file", f"cannot read: {e}"))
    return problems, len(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="flowers data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="folder-per-class tree -> train_set.csv, eval_set.csv, dict.txt")
    imp.add_argument("root", metavar="DIR")
    imp.add_argument("--output", required=True)
    imp.add_argument("--eval-fraction", type=float, default=0.1)
    imp.add_argument("--seed", type=int, default=0)
    chk = sub.add_parser("check", help="report bad rows of a CSV; non-zero exit if any")
    chk.add_argument("--input_path", required=True)
    chk.add_argument("--input_dict", required=True)
    args = parser.parse_args(argv)

    if args.command == "import":
        labels, n_train, n_eval = import_tree(args.root, args.output, args.eval_fraction, args.seed)
        print(f"{len(labels)} labels, {n_train} train rows, {n_eval} eval rows -> {args.output}")
        return 0
    problems, n_rows = check(args.input_path, args.input_dict)
    for line_no, uri, reason, message in problems:
        print(f"line {line_no}: {reason}: {uri} {message}".replace("  ", " "))
    counts = collections.Counter(reason for _, _, reason, _ in problems)
    summary = ", ".join(f"{n} {r}" for r, n in sorted(counts.items())) or "none"
    print(f"{n_rows} rows, {n_rows - len(problems)} ok, {len(problems)} bad ({summary})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
