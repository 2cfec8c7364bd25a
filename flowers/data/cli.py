"""`flowers data import|check`: the lab's CSVs from a folder tree, and a check of any CSV.

    flowers data import ../shared/datasets/flower_photos --output data/flowers [--eval_fraction 0.1]
    flowers data check --input_path data/flowers/train_set.csv --input_dict data/flowers/dict.txt
"""
import argparse
import collections
import json
import sys

from flowers import cli
from flowers.core import defaults, storage
from flowers.data import importer


def eval_fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def parse_args(argv):
    parser = cli.ArgumentParser(prog="flowers data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="folder-per-class tree -> train_set.csv, eval_set.csv, dict.txt")
    imp.add_argument("root", metavar="DIR", help="a folder with one sub-folder of images per class")
    imp.add_argument("--output", required=True, help="folder for train_set.csv, eval_set.csv, dict.txt")
    imp.add_argument("--eval_fraction", type=eval_fraction, default=defaults.EVAL_FRACTION,
                     help="share of each class held out")
    cli.alias(imp, "--eval-fraction", "eval_fraction", type=eval_fraction)
    imp.add_argument("--seed", type=int, default=defaults.SPLIT_SEED, help="the split's random seed")
    chk = sub.add_parser("check", help="report bad rows of a CSV; non-zero exit if any")
    chk.add_argument("--input_path", required=True, help="one CSV of uri,label[,label...] rows")
    chk.add_argument("--input_dict", required=True, help="dict.txt: one label per line")
    chk.add_argument("--format", choices=("text", "json"), default="text",
                     help="json: one object per bad row, then a summary object")
    args = parser.parse_args(argv)
    if args.command == "check" and "," in args.input_path and not storage.exists(args.input_path):
        parser.error(f"--input_path takes one CSV; check {args.input_path.split(',')[0]} and the others one by one")
    return args


def run_import(args):
    try:
        labels, n_train, n_eval = importer.import_tree(args.root, args.output, args.eval_fraction, args.seed)
    except (OSError, ValueError) as e:
        return cli.fail("flowers data import", e, "give the folder that holds one sub-folder of images per class")
    print(f"{len(labels)} labels, {n_train} train rows, {n_eval} eval rows -> {args.output}")
    print(f"next: flowers data check --input_path {args.output}/train_set.csv --input_dict {args.output}/dict.txt")
    return 0


def run_check(args):
    from flowers.data import check  # decodes images: TensorFlow

    try:
        problems, n_rows = check.check(args.input_path, args.input_dict)
    except (OSError, ValueError) as e:
        return cli.fail("flowers data check", e, "`flowers data import DIR --output OUT` writes both files")
    counts = collections.Counter(reason for _, _, reason, _ in problems)
    if args.format == "json":
        for line_no, uri, reason, message in problems:
            print(json.dumps({"line": line_no, "uri": uri, "reason": reason, "message": message}))
        print(json.dumps({"rows": n_rows, "ok": n_rows - len(problems), "bad": len(problems),
                          "reasons": dict(sorted(counts.items()))}))
        return 1 if problems else 0
    for line_no, uri, reason, message in problems:
        print(f"line {line_no}: {reason}: {uri} {message}".replace("  ", " "))
    summary = ", ".join(f"{n} {r}" for r, n in sorted(counts.items())) or "none"
    print(f"{n_rows} rows, {n_rows - len(problems)} ok, {len(problems)} bad ({summary})")
    return 1 if problems else 0


def main(argv=None):
    args = parse_args(argv)
    return run_import(args) if args.command == "import" else run_check(args)


if __name__ == "__main__":
    sys.exit(main())
