"""`flowers backbone classify IMAGE...`: top-5 ImageNet classes, a smoke test of a backbone."""
import json
import sys

import numpy as np

from flowers import cli
from flowers.core import backbones, images
from flowers.core.rejection import Rejection


def classify(paths, backbone=backbones.DEFAULT_BACKBONE, weights=None, k=5):
    """Yields (path, [(class_id, name, score), ...]) per image, or (path, Rejection)."""
    spec = backbones.get(backbone)
    model = backbones.load(backbone, include_top=True, weights=weights)
    names = backbones.imagenet_class_names()
    for path in paths:
        try:
            x = images.load_image(images.read_image(path)[0], spec.image_size, probed=True)
        except Rejection as e:
            yield path, e
            continue
        logits = model(x[None], training=False).numpy()[0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:k]
        yield path, [(int(i), names[i], float(probs[i])) for i in top]


def main(argv=None):
    parser = cli.ArgumentParser(prog="flowers backbone", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cls = sub.add_parser("classify", help="print the top-5 ImageNet classes of images")
    cls.add_argument("images", nargs="+", metavar="IMAGE")
    cls.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE, choices=sorted(backbones.BACKBONES))
    cls.add_argument("--weights", help="Keras weights file (keras.applications backbones)")
    cls.add_argument("--json", action="store_true", help="one JSON object per line per image")
    sub.add_parser("list", help="list the registered backbones")
    args = parser.parse_args(argv)

    if args.command == "list":
        for b in backbones.BACKBONES.values():
            print(f"{b.name:20} {b.image_size:4d}px {b.embedding_size:5d}-d  input {b.normalization:16}  {b.source}")
        return 0
    failed = 0
    try:
        results = list(classify(args.images, args.backbone, args.weights))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, top in results:
        if isinstance(top, Exception):
            failed += 1
            print(f"{path}: error: {top}", file=sys.stderr)
        elif args.json:
            print(json.dumps({"image": path, "top5": [
                {"class_id": i, "name": n, "score": round(s, 6)} for i, n, s in top]}))
        else:
            print(f"{path}: " + ", ".join(f"{n} ({i}) {s:.3f}" for i, n, s in top))
    return 1 if failed else 0
