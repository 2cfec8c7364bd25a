"""One head trial on preprocessed records, for a Katib trial pod (the train image):

    python -m flowers.automl.trial --train_records PREFIX --eval_records PREFIX \\
        --learning_rate 0.001 --weight_decay 1e-4 --dropout 0.3 --label_smoothing 0.1 \\
        --hidden_units 512 --batch_size 64

Prints `accuracy=<validation accuracy>` (Katib's objective, read by its StdOut metrics
collector) and `eval_accuracy=<held-out eval accuracy>` (reported only). Same code as a local
Optuna trial: flowers.automl.search.train_head on the same validation slice of the train rows.
"""
import argparse
import sys

import numpy as np

from flowers.automl import space


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m flowers.automl.trial", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_records", required=True, help="PREFIX of the train records (local or gs://)")
    parser.add_argument("--eval_records", required=True, help="PREFIX of the eval records")
    for name, kind, _, choices, _ in space.PARAMETERS:
        parser.add_argument(f"--{name}", required=True,
                            type=float if kind == "double" else type(choices[0]))
    parser.add_argument("--epochs", type=int, default=space.EPOCHS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from flowers.automl import search

    data = search.load_embeddings(args.train_records, args.eval_records)
    params = {name: getattr(args, name) for name, *_ in space.PARAMETERS}
    head, history = search.train_head(params, data, epochs=args.epochs)
    for epoch, value in enumerate(history):
        print(f"epoch {epoch + 1}: {space.OBJECTIVE}={value:.6f}", flush=True)
    eval_accuracy = search.accuracy(head.predict(data["eval"][1], verbose=0), data["eval"][2])
    print(f"{space.OBJECTIVE}={max(history):.6f}")
    print(f"eval_accuracy={eval_accuracy:.6f}")
    print(f"best_epoch={int(np.argmax(history)) + 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
