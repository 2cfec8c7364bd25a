"""`flowers predict IMAGE...`: classify images with a model server (REST or gRPC).

    flowers predict a.jpg b.png --server http://localhost:8501 [--label stable] [--json]
    flowers predict a.jpg --grpc localhost:8500 --version 2
    flowers predict a.jpg --dump-request request.json      # the lab's request.json, no server

Prints key, label and the top scores per image (`--json`: one object per line, as
the model returns it). Files that are not images are reported and skipped; the
exit status is 1 if any image failed.
"""
import argparse
import json
import sys

from flowers.core import images, storage
from flowers.core.rejection import Rejection
from flowers.data import rows as csv_rows
from flowers.predict import client


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="flowers predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="local paths or gs:// URIs")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="URL", help="REST endpoint, e.g. http://localhost:8501")
    where.add_argument("--grpc", metavar="HOST:PORT", help="gRPC endpoint, e.g. localhost:8500")
    where.add_argument("--dump-request", metavar="FILE", help="write the REST request body to FILE and stop")
    p.add_argument("--model", default=client.DEFAULT_MODEL)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int)
    which.add_argument("--label")
    p.add_argument("--signature_name", default=None)
    p.add_argument("--keys", nargs="+", help="one key per image (default: the image's path)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--dict", metavar="DICT_TXT", help="dict.txt, to name the top scores")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16, help="images per request")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = p.parse_args(argv)
    if args.keys and len(args.keys) != len(args.images):
        p.error(f"{len(args.images)} images but {len(args.keys)} keys")
    return args


def read_images(paths, keys):
    """[(key, bytes)] for readable images; problems as (key, message)."""
    good, bad = [], []
    for path, key in zip(paths, keys):
        try:
            content, _ = images.read_image(path)
        except Rejection as e:
            bad.append((key, f"{e.reason}: {e}"))
            continue
        good.append((key, content))
    return good, bad


def format_row(row, names=None, top=3):
    scores = row.get("scores") or []
    best = sorted(range(len(scores)), key=lambda i: -scores[i])[:top]
    named = ", ".join(f"{names[i] if names else '#' + str(i)} {scores[i]:.3f}" for i in best)
    return f"{row.get('key')}\t{row.get('label')}\t{named}"


def main(argv=None):
    args = parse_args(argv)
    keys = args.keys or args.images
    good, bad = read_images(args.images, keys)
    for key, message in bad:
        print(f"{key}: skipped: {message}", file=sys.stderr)
    if args.dump_request:
        storage.write_text(args.dump_request, json.dumps(client.request_body([b for _, b in good],
                                                                             [k for k, _ in good])))
        print(f"wrote {len(good)} instances to {args.dump_request}", file=sys.stderr)
        return 1 if bad else 0
    names = csv_rows.read_dict(args.dict) if args.dict else None
    api = client.RestClient(args.server, args.timeout) if args.server else client.GrpcClient(args.grpc, args.timeout)
    failed = len(bad)
    with api:
        for start in range(0, len(good), args.batch_size):
            chunk = good[start:start + args.batch_size]
            try:
                results = api.predict([b for _, b in chunk], [k for k, _ in chunk], model=args.model,
                                      version=args.version, label=args.label, signature_name=args.signature_name)
            except client.ServingError as e:
                failed += len(chunk)
                print(f"{', '.join(k for k, _ in chunk)}: server error {e.status}: {e.message}", file=sys.stderr)
                continue
            except OSError as e:  # connection refused, timeout...
                print(f"cannot reach the server: {e}", file=sys.stderr)
                return 2
            for row in results:
                print(json.dumps(row) if args.json else format_row(row, names, args.top), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
