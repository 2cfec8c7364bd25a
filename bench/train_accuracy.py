"""Train accuracy at the lab's defaults on the shared photos: import -> preprocess -> train.

    .venv/bin/python bench/train_accuracy.py [--backbone efficientnet_lite2 ...] [--work /tmp/flowers-bench]
        [--fresh] [--splits N] [-- EXTRA flowers train FLAGS]

For each backbone, runs the real commands as a user would:
  flowers data import PHOTOS --output WORK/data --eval-fraction 0.1 --seed 0   (stratified 90/10)
  flowers preprocess ... --output_path WORK/BACKBONE/train,WORK/BACKBONE/eval  (skipped when its
                                                      outputs exist, unless --fresh: it takes minutes)
  flowers train ... --output_path WORK/BACKBONE/run  (always a fresh run dir; 512 hidden, dropout
                                                      0.5, Adam, batch 100, 1000 steps by default)
then prints train and eval accuracy, steps and wall times from metrics.json. The target is an eval
accuracy of at least 0.92 with efficientnet_lite2; the exit status is 1 if a backbone misses it.

With --splits N it also trains on N other stratified 90/10 splits (seeds 0..N-1, the same
flowers.importer.stratified_split) of the same embeddings, regrouped by image, and prints the mean and
spread of eval accuracy: with 164 eval photos one photo is 0.006, so one split is a noisy figure.
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "datasets" / "flower_photos"
TARGETS = {"efficientnet_lite2": 0.92}  # eval accuracy at the lab's defaults


def flowers(*args):
    """Run `flowers ARGS` (this checkout's package); returns its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flowers", *map(str, args)], check=True)
    return time.perf_counter() - start


def preprocessed(prefix):
    return (pathlib.Path(f"{prefix}.metadata.json").exists()
            and any(prefix.parent.glob(f"{prefix.name}-*.tfrecord.gz")))


def run_backbone(backbone, work, fresh, train_flags):
    data = work / "data"
    out = work / backbone
    train_prefix, eval_prefix = out / "train", out / "eval"
    preprocess_s = None
    if fresh or not (preprocessed(train_prefix) and preprocessed(eval_prefix)):
        preprocess_s = flowers("preprocess", "--input_path", f"{data / 'train_set.csv'},{data / 'eval_set.csv'}",
                               "--input_dict", data / "dict.txt", "--output_path", f"{train_prefix},{eval_prefix}",
                               "--backbone", backbone)
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run: the same dir would resume
    train_s = flowers("train", "--train_data_paths", f"{train_prefix}-*.tfrecord.gz",
                      "--eval_data_paths", f"{eval_prefix}-*.tfrecord.gz", "--output_path", run, *train_flags)
    m = json.loads((run / "metrics.json").read_text())
    return dict(m, preprocess_s=preprocess_s, train_command_s=train_s)


def resplit(backbone, work, seeds, train_flags):
    """Eval accuracy of a fresh run on each other stratified split of the embedded photos."""
    import tensorflow as tf

    from flowers.core import records
    from flowers.data import importer

    out = work / backbone
    serialized = {}  # image uri -> its Example, from the train and eval records
    for role in ("train", "eval"):
        files = tf.io.gfile.glob(records.shard_pattern(str(out / role)))
        for s in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            uri = tf.train.Example.FromString(s.numpy()).features.feature["image_uri"].bytes_list.value[0]
            serialized[uri.decode()] = s.numpy()
    tree = {}
    for uri in serialized:
        tree.setdefault(pathlib.Path(uri).parent.name, []).append(uri)
    metadata = records.read_metadata(str(out / "train"))
    accuracies = []
    for seed in seeds:
        split_dir = out / f"split-{seed}"
        shutil.rmtree(split_dir, ignore_errors=True)
        split_dir.mkdir(parents=True)
        for role, rows in zip(("train", "eval"), importer.stratified_split(tree, 0.1, seed)):
            with tf.io.TFRecordWriter(f"{split_dir / role}-00000-of-00001{records.RECORD_SUFFIX}", "GZIP") as w:
                for uri, _label in rows:
                    w.write(serialized[uri])
            records.write_metadata(str(split_dir / role), metadata)
        flowers("train", "--train_data_paths", records.shard_pattern(str(split_dir / "train")),
                "--eval_data_paths", records.shard_pattern(str(split_dir / "eval")),
                "--output_path", split_dir / "run", *train_flags)
        accuracies.append(json.loads((split_dir / "run" / "metrics.json").read_text())["accuracy"])
    return accuracies


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", nargs="+", default=["efficientnet_lite2", "efficientnet_lite0"])
    parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/flowers-bench"))
    parser.add_argument("--fresh", action="store_true", help="preprocess again even if outputs exist")
    parser.add_argument("--splits", type=int, default=0, help="also train on N re-drawn 90/10 splits")
    parser.add_argument("train_flags", nargs="*", help="extra `flowers train` flags, after --")
    args = parser.parse_args(argv)

    flowers("data", "import", PHOTOS, "--output", args.work / "data", "--eval-fraction", "0.1", "--seed", "0")
    results = {b: run_backbone(b, args.work, args.fresh, args.train_flags) for b in args.backbone}

    print(f"\n{'backbone':20} {'n_train':>7} {'n_eval':>6} {'train_acc':>9} {'eval_acc':>8} {'eval_loss':>9} "
          f"{'steps':>5} {'train_wall_s':>12} {'command_s':>9} {'preprocess_s':>12}  target")
    missed = []
    for b, m in results.items():
        target = TARGETS.get(b)
        verdict = "-" if target is None else ("PASS" if m["accuracy"] >= target else "FAIL") + f" >= {target}"
        if target is not None and m["accuracy"] < target:
            missed.append(b)
        pre = "reused" if m["preprocess_s"] is None else f"{m['preprocess_s']:.0f}"
        print(f"{b:20} {m['n_train']:>7} {m['n_eval']:>6} {m['train_accuracy']:>9.4f} {m['accuracy']:>8.4f} "
              f"{m['loss']:>9.4f} {m['steps']:>5} {m['wall_time_s']:>12.1f} {m['train_command_s']:>9.1f} "
              f"{pre:>12}  {verdict}")
    print("(train_wall_s: metrics.json wall_time_s, training + evaluation + export inside `flowers train`; "
          "command_s: the whole command with imports)")
    if args.splits:
        for b in args.backbone:
            acc = resplit(b, args.work, range(args.splits), args.train_flags)
            print(f"{b}: eval accuracy over {len(acc)} stratified splits (seeds 0..{len(acc) - 1}): "
                  f"mean {statistics.mean(acc):.4f}, sd {statistics.pstdev(acc):.4f}, "
                  f"min {min(acc):.4f}, max {max(acc):.4f} ({' '.join(f'{a:.4f}' for a in acc)})")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
