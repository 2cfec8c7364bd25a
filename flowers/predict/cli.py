"""`flowers predict IMAGE...`: classify images with a model server (REST or gRPC).

    flowers predict a.jpg b.png --server http://localhost:8501 [--label canary] [--format json]
    flowers predict a.jpg --grpc localhost:8500 --version 2
    flowers predict a.jpg --dump_request request.json       # the lab's request.json, no server
    flowers predict --json_instances request.json --server http://localhost:8501

Without --label/--version the `stable` label answers (the default version, as gcloud's), or
the highest loaded version when the server has no stable label (a note says so).
--json_instances takes the lab's request.json ({"instances": [...]}) or gcloud's
newline-delimited file (one {"key": ..., "image_bytes": {"b64": ...}} per line).
Prints key, label and the top scores per image (`--format json`: one object per line, as
the model returns it). Files that are not images are reported and skipped; the
exit status is 1 if any image failed.
"""
import base64
import json
import sys

from flowers import cli
from flowers.core import defaults, images, storage
from flowers.core.rejection import Rejection
from flowers.data import rows as csv_rows
from flowers.predict import client


def parse_args(argv=None):
    p = cli.ArgumentParser(prog="flowers predict", description=__doc__)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="local paths or gs:// URIs")
    p.add_argument("--json_instances", metavar="FILE", help="request.json or newline-delimited instances")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="URL", help="REST endpoint, e.g. http://localhost:8501")
    where.add_argument("--grpc", metavar="HOST:PORT", help="gRPC endpoint, e.g. localhost:8500")
    where.add_argument("--dump_request", metavar="FILE", help="write the REST request body to FILE and stop")
    cli.alias(where, "--dump-request", "dump_request")
    p.add_argument("--model", default=client.DEFAULT_MODEL, help="the model's name on the server")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="a version number")
    which.add_argument("--label", help=f"a version label (default: {defaults.STABLE}, if the server has it)")
    p.add_argument("--signature_name", default=None)
    p.add_argument("--keys", nargs="+", help="one key per image (default: the image's path)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="json: one object per line")
    cli.alias(p, "--json", "format", action="store_const", const="json")
    p.add_argument("--dict", metavar="DICT_TXT", help="dict.txt, to name the top scores")
    p.add_argument("--top", type=int, default=3, help="scores shown per image")
    p.add_argument("--batch_size", type=int, default=16, help="images per request")
    cli.alias(p, "--batch-size", "batch_size", type=int)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = p.parse_args(argv)
    if not args.images and not args.json_instances:
        p.error("give IMAGE paths or --json_instances FILE")
    if args.keys and len(args.keys) != len(args.images):
        p.error(f"{len(args.images)} images but {len(args.keys)} keys")
    if args.server and not args.server.startswith(("http://", "https://")):
        p.error(f"--server {args.server}: give a URL with its scheme, e.g. http://{args.server}")
    if args.grpc and "://" in args.grpc:
        p.error(f"--grpc {args.grpc}: give HOST:PORT, without a scheme")
    return args


def read_instances(path):
    """request.json ({"instances": [...]}) or one instance per line -> [(key, bytes)]."""
    text = storage.read_text(path)
    try:
        instances = json.loads(text)["instances"]
    except (ValueError, KeyError, TypeError):
        instances = [json.loads(line) for line in text.splitlines() if line.strip()]
    pairs = []
    for i, instance in enumerate(instances):
        try:
            pairs.append((str(instance.get("key", i)), base64.b64decode(instance["image_bytes"]["b64"])))
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: instance {i + 1} is not {{\"key\": ..., \"image_bytes\": {{\"b64\": ...}}}}") from None
    return pairs


def default_label(api, args):
    """`stable` when the server has it (the default version), else None (highest loaded)."""
    if args.label or args.version is not None:
        return args.label
    try:
        status = api.status(args.model, label=defaults.STABLE)
    except client.ServingError as e:
        if e.status == "UNAVAILABLE":  # gRPC: nothing listening
            raise OSError(e.message) from None
        print(f"note: {args.model} has no '{defaults.STABLE}' label on the server: "
              "its highest loaded version answers", file=sys.stderr)
        return None
    states = status.get("model_version_status") or status.get("modelVersionStatus") or [{}]  # REST, gRPC
    print(f"{args.model}: {defaults.STABLE} -> version {states[0].get('version', '?')}", file=sys.stderr)
    return defaults.STABLE


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
    if args.json_instances:
        try:
            good += read_instances(args.json_instances)
        except (OSError, ValueError) as e:
            return cli.fail("flowers predict", e)
    for key, message in bad:
        print(f"{key}: skipped: {message}", file=sys.stderr)
    if args.dump_request:
        storage.write_text(args.dump_request, json.dumps(client.request_body([b for _, b in good],
                                                                             [k for k, _ in good])))
        print(f"wrote {len(good)} instances to {args.dump_request}", file=sys.stderr)
        return 1 if bad else 0
    names = csv_rows.read_dict(args.dict) if args.dict else None
    where = args.server or args.grpc
    api = client.RestClient(args.server, args.timeout) if args.server else client.GrpcClient(args.grpc, args.timeout)
    failed = len(bad)
    try:
        with api:
            label = default_label(api, args)
            for start in range(0, len(good), args.batch_size):
                chunk = good[start:start + args.batch_size]
                try:
                    results = api.predict([b for _, b in chunk], [k for k, _ in chunk], model=args.model,
                                          version=args.version, label=label, signature_name=args.signature_name)
                except client.ServingError as e:
                    if e.status == "UNAVAILABLE":
                        raise OSError(e.message) from None
                    failed += len(chunk)
                    print(f"{', '.join(k for k, _ in chunk)}: server error {e.status}: {e.message}", file=sys.stderr)
                    continue
                for row in results:
                    print(json.dumps(row) if args.format == "json" else format_row(row, names, args.top), flush=True)
    except OSError as e:  # connection refused, timeout...
        reason = getattr(e, "reason", None) or e  # urllib's URLError wraps the socket error
        reason = cli.one_line(reason) if isinstance(reason, BaseException) else reason
        return cli.fail("flowers predict", f"cannot reach {where} ({reason})", f"is flowers serve running at {where}?")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
