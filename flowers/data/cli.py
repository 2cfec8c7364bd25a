"""`flowers data import|check`: the lab's CSVs from a folder tree, and a check of any CSV."""
import argparse
import collections
import sys

from flowers.core import defaults
from flowers.data import check, importer


def main(argv=None):
    parser = argparse.ArgumentParser(prog="flowers data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="folder-per-class tree -> train_set.csv, eval_set.csv, dict.txt")
    imp.add_argument("root", metavar="DIR")
    imp.add_argument("--output", required=True)
    imp.add_argument("--eval-fraction", type=float, default=defaults.EVAL_FRACTION)
    imp.add_argument("--seed", type=int, default=defaults.SPLIT_SEED)
    chk = sub.add_parser("check", help="report bad rows of a CSV; non-zero exit if any")
    chk.add_argument("--input_path", required=True)
    chk.add_argument("--input_dict", required=True)
    args = parser.parse_args(argv)

    if args.command == "import":
        labels, n_train, n_eval = importer.import_tree(args.root, args.output, args.eval_fraction, args.seed)
        print(f"{len(labels)} labels, {n_train} train rows, {n_eval} eval rows -> {args.output}")
        return 0
    problems, n_rows = check.check(args.input_path, args.input_dict)
    for line_no, uri, reason, message in problems:
        print(f"line {line_no}: {reason}: {uri} {message}".replace("  ", " "))
    counts = collections.Counter(reason for _, _, reason, _ in problems)
    summary = ", ".join(f"{n} {r}" for r, n in sorted(counts.items())) or "none"
    print(f"{n_rows} rows, {n_rows - len(problems)} ok, {len(problems)} bad ({summary})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
