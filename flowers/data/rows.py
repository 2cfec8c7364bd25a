"""The lab's inputs, read one way everywhere: dict.txt (line index = label id) and CSV rows
`uri,label[,label...]` (labels optional where a caller says so).

Every reader of a CSV (data check, preprocess, batch-predict, the pipeline's import step, the
demo) goes through `read_lines` + `parse_row`: the csv module's quoting (a quoted uri may hold
commas), CRLF or LF, a UTF-8 byte order mark, spaces around fields. Each line is decoded on its
own, so a line that is not UTF-8 is one rejected row, not a failed run.
"""
import codecs
import csv
import dataclasses
import io
import os

from flowers.core import storage
from flowers.core.rejection import Rejection


@dataclasses.dataclass(frozen=True)
class Row:
    line: int  # 1-based line in the CSV
    uri: str  # resolved: gs://..., or an absolute path
    labels: tuple  # label names as written
    label_ids: tuple = ()  # their ids in dict.txt, when a dict was given


def _text(data, path):
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_dict(path):
    """dict.txt -> label names (index = id). Blank lines are skipped; duplicates are an error."""
    labels = [line.strip() for line in _text(storage.read_bytes(path), path).splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"{path}: no labels")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate labels: {', '.join(duplicates)}")
    return labels


def read_lines(csv_path):
    """(1-based line number, bytes) for each non-blank line, without the BOM or line ending."""
    data = storage.read_bytes(csv_path)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    return [(i, line) for i, line in enumerate(data.splitlines(), 1) if line.strip()]


def line_text(line):
    """A raw line as text for messages and rejected-row files (undecodable bytes replaced)."""
    return line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line


def parse_row(line_no, line, base_dir, label_ids=None, labels_required=True):
    """One CSV line (bytes or text) -> Row; Rejection('malformed_row' | 'unknown_label').

    label_ids: {name: id} from dict.txt; when given, every label must be in it."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Rejection("malformed_row", f"line {line_no}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        fields = [f.strip() for f in next(csv.reader([line], strict=True))]
    except (csv.Error, StopIteration) as e:
        raise Rejection("malformed_row", f"line {line_no}: unparseable CSV ({e})") from None
    uri, labels = (fields[0] if fields else ""), tuple(fields[1:])
    if not uri or not all(labels) or (labels_required and not labels):
        expected = "uri,label[,label...]" if labels_required else "uri[,label...]"
        raise Rejection("malformed_row", f"line {line_no}: expected {expected}; got {line!r}")
    ids = ()
    if label_ids is not None:
        unknown = [label for label in labels if label not in label_ids]
        if unknown:
            raise Rejection("unknown_label", f"line {line_no}: unknown label(s) {', '.join(unknown)}")
        ids = tuple(label_ids[label] for label in labels)
    return Row(line_no, storage.resolve(uri, base_dir), labels, ids)


def read_rows(csv_path, label_ids=None, labels_required=True):
    """Every row of a CSV: (rows, rejected) where rejected is [(line, text, Rejection)]."""
    base_dir, rows, rejected = storage.dirname(csv_path), [], []
    for line_no, line in read_lines(csv_path):
        try:
            rows.append(parse_row(line_no, line, base_dir, label_ids, labels_required))
        except Rejection as e:
            rejected.append((line_no, line_text(line), e))
    return rows, rejected


def same_file(uri):
    """The key two rows naming the same image share (./a.jpg and a.jpg alike)."""
    return uri if storage.is_remote(uri) else os.path.normpath(uri)


def duplicate_lines(lines, base_dir):
    """{line_no: (uri, first line_no)} for each (line_no, line) naming an image an earlier row named.
    Rows that do not parse are left for parse_row to reject."""
    first, duplicates = {}, {}
    for line_no, line in lines:
        try:
            uri = same_file(parse_row(line_no, line, base_dir, labels_required=False).uri)
        except Rejection:
            continue
        if uri in first:
            duplicates[line_no] = (uri, first[uri])
        else:
            first[uri] = line_no
    return duplicates


def format_rows(rows):
    """[(uri, label, ...)] -> CSV text, quoting where needed (uris with commas)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_rows(path, rows):
    storage.write_text(path, format_rows(rows))
