"""Preprocess throughput: the Beam pipeline against the raw batched backbone, side by side.

    .venv/bin/python bench/preprocess.py [--limit N] [--backbone NAME] [--rounds R] [-- BEAM/PREPROCESS FLAGS]

On the shared photos (default all 1,651) each round runs, back to back:
  raw       read bytes + flowers.images.load_image + model.predict in batches, in this process, no
            Beam (model build timed apart); model-only = the predict calls alone;
  pipeline  `flowers preprocess` as a user runs it (a subprocess: imports, model load, Beam and the
            TFRecord writes all count), train and eval in one run.
Prints images/s for each and the ratio pipeline / raw (target: at least 0.8). Other work on the
machine slows both; rounds alternate so that they share the noise.
"""
import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "datasets" / "flower_photos"
BATCH_SIZE = 32  # the pipeline's default RunInference batch size (flowers.preprocess.BATCH_SIZE)


def photo_list(limit):
    """(path, label) pairs, all photos or `limit` spread evenly over the sorted list."""
    paths = sorted(PHOTOS.glob("*/*.jpg"))
    if limit and limit < len(paths):
        step = len(paths) / limit
        paths = [paths[int(i * step)] for i in range(limit)]
    return [(str(p), p.parent.name) for p in paths]


def write_inputs(folder, photos):
    """train_set.csv (9 of 10 rows), eval_set.csv, dict.txt, as `flowers data import` writes them."""
    labels = sorted({label for _, label in photos})
    (folder / "dict.txt").write_text("".join(f"{label}\n" for label in labels))
    rows = [f"{path},{label}\n" for path, label in photos]
    (folder / "train_set.csv").write_text("".join(r for i, r in enumerate(rows) if i % 10))
    (folder / "eval_set.csv").write_text("".join(r for i, r in enumerate(rows) if not i % 10))


def raw(model, spec, photos, batch_size):
    """Returns (seconds for read+decode+predict, seconds in predict alone)."""
    import numpy as np

    from flowers.core import images

    predict_s, start = 0.0, time.perf_counter()
    for i in range(0, len(photos), batch_size):
        batch = np.stack([images.load_image(open(path, "rb").read(), spec.image_size)
                          for path, _ in photos[i:i + batch_size]])
        t = time.perf_counter()
        model.predict(batch, batch_size=batch_size, verbose=0)
        predict_s += time.perf_counter() - t
    return time.perf_counter() - start, predict_s


def pipeline(folder, backbone, extra):
    out = folder / "out"
    cmd = [sys.executable, "-m", "flowers", "preprocess",
           "--input_path", f"{folder / 'train_set.csv'},{folder / 'eval_set.csv'}",
           "--input_dict", str(folder / "dict.txt"),
           "--output_path", f"{out / 'train'},{out / 'eval'}", "--backbone", backbone, *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"pipeline failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    written = sum(int(n) for n in re.findall(r"written (\d+),", proc.stdout))
    in_run = float(re.search(r"embedded in ([\d.]+) s", proc.stdout).group(1))
    return elapsed, in_run, written


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="use this many photos (default: all 1,651)")
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="raw baseline batch size")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]

    import numpy as np

    from flowers.core import backbones

    photos = photo_list(args.limit)
    spec = backbones.get(args.backbone)
    t = time.perf_counter()
    model = backbones.load(args.backbone)
    warm = np.zeros((args.batch_size, spec.image_size, spec.image_size, 3), "float32")
    model.predict(warm, batch_size=args.batch_size, verbose=0)  # build and trace outside the timing
    build_s = time.perf_counter() - t
    print(f"{len(photos)} photos, {args.backbone}, load+first batch {build_s:.1f} s, "
          f"pipeline flags: {' '.join(extra) or '(defaults)'}, load average {os.getloadavg()[0]:.2f}")

    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        write_inputs(folder, photos)
        for r in range(1, args.rounds + 1):
            raw_s, predict_s = raw(model, spec, photos, args.batch_size)
            wall_s, in_run_s, written = pipeline(folder, args.backbone, extra)
            if written != len(photos):
                sys.exit(f"pipeline wrote {written} of {len(photos)} images")
            n = len(photos)
            ratio = (n / wall_s) / (n / raw_s)
            ratios.append(ratio)
            print(f"round {r}: raw {n / raw_s:.1f} images/s (model-only {n / predict_s:.1f}) | pipeline "
                  f"{n / wall_s:.1f} images/s whole run ({wall_s:.1f} s; {n / in_run_s:.1f} images/s "
                  f"inside run()) | ratio pipeline/raw {ratio:.2f} | load average {os.getloadavg()[0]:.2f}")
    print(f"ratio pipeline/raw: {statistics.median(ratios):.2f} (median of {len(ratios)}; target >= 0.8)")


if __name__ == "__main__":
    main()
