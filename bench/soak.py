"""Soak: `flowers serve` (loopback) under 16, then 64 concurrent REST clients, 10 % of the requests bad.

    nice -n 10 .venv/bin/python bench/soak.py [--model_dir DIR] [--seconds 120] [--clients 16,64]

Each client sends one photo per request; every tenth request is a bad one (malformed JSON, bad
base64, a text file as image, a 34-byte WebP declaring 13000x13000, a lone surrogate, too many
instances, an unknown model, a body cut off mid-way). Per phase: good requests/s, p50/p99 latency of
good requests, errors on good requests (must be 0), bad requests answered 4xx / 5xx, and the
server's RSS (VmRSS) before and after. Exits 1 if a good request failed or a bad one got a 5xx.
"""
import argparse
import asyncio
import base64
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "datasets" / "flower_photos"
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", help="a TF Serving base path holding numbered versions (default: build one)")
    p.add_argument("--seconds", type=float, default=120, help="length of each phase")
    p.add_argument("--clients", default="16,64")
    p.add_argument("--photos", type=int, default=50)
    return p.parse_args(argv)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bad_requests():
    """(name, path, body bytes): each must get a 4xx, never a 5xx or a dead server."""
    from flowers import testing

    bomb = testing.webp_declaring(13000, 13000)

    def one(image, key="k"):
        return json.dumps({"instances": [{"key": key, "image_bytes": {"b64": base64.b64encode(image).decode()}}]})

    predict = "/v1/models/flowers:predict"
    return [
        ("malformed JSON", predict, b'{"instances": [{"key": "k", "image_bytes": '),
        ("bad base64", predict, b'{"instances": [{"key": "k", "image_bytes": {"b64": "@@@"}}]}'),
        ("text as image", predict, one(b"not an image at all").encode()),
        ("WebP bomb", predict, one(bomb).encode()),
        ("lone surrogate", predict, b'{"instances": [{"key": "\\ud800", "image_bytes": {"b64": ""}}]}'),
        ("too many instances", predict, json.dumps({"instances": [
            {"key": str(i), "image_bytes": {"b64": "AAAA"}} for i in range(5000)]}).encode()),
        ("unknown model", "/v1/models/nope:predict", one(b"x").encode()),
    ]


async def phase(rest_url, pid, goods, bads, clients, seconds):
    import aiohttp

    latencies, good_errors, bad_status = [], [], {}
    deadline = time.monotonic() + seconds

    async def client(session, c):
        n = c
        while time.monotonic() < deadline:
            n += 1
            if n % 10 == 0:
                name, path, body = bads[(n // 10) % len(bads)]
                try:
                    async with session.post(rest_url + path, data=body) as resp:
                        await resp.read()
                        bad_status.setdefault(name, []).append(resp.status)
                except aiohttp.ClientError as e:
                    bad_status.setdefault(name, []).append(f"{type(e).__name__}")
                continue
            started = time.monotonic()
            try:
                async with session.post(rest_url + "/v1/models/flowers:predict", data=goods[n % len(goods)]) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        good_errors.append(f"{resp.status} {body[:200]!r}")
                        continue
            except aiohttp.ClientError as e:
                good_errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append(time.monotonic() - started)

    async def hang_up():  # a client that sends half a body and leaves, every second
        host, port = rest_url.removeprefix("http://").rsplit(":", 1)
        while time.monotonic() < deadline:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/models/flowers:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            await writer.drain()
            writer.close()
            bad_status.setdefault("hang-up mid-body", []).append("sent")
            await asyncio.sleep(1)

    rss_before = rss_mib(pid)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout, headers={"Content-Type": "application/json"},
                                     connector=aiohttp.TCPConnector(limit=clients + 1)) as session:
        started = time.monotonic()
        await asyncio.gather(hang_up(), *(client(session, c) for c in range(clients)))
        elapsed = time.monotonic() - started
    return {"clients": clients, "seconds": elapsed, "good": len(latencies), "good_errors": good_errors,
            "bad": bad_status, "latencies": sorted(latencies), "rss_before": rss_before, "rss_after": rss_mib(pid)}


def percentile(ordered, q):
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def report(r):
    lat = r["latencies"]
    bad_counts = {name: (sum(1 for s in v if isinstance(s, int) and 400 <= s < 500),
                         sum(1 for s in v if not isinstance(s, int) or s >= 500)) for name, v in r["bad"].items()}
    print(f"{r['clients']} clients, {r['seconds']:.0f} s: {r['good'] / r['seconds']:.1f} good req/s, "
          f"p50 {percentile(lat, 50) * 1000:.0f} ms, p99 {percentile(lat, 99) * 1000:.0f} ms, "
          f"{r['good']} good ok, {len(r['good_errors'])} good errors; "
          f"RSS {r['rss_before']:.0f} -> {r['rss_after']:.0f} MiB ({r['rss_after'] - r['rss_before']:+.0f})")
    for name, (ok, wrong) in sorted(bad_counts.items()):
        note = "" if name.startswith("hang-up") else f" 4xx {ok}, other {wrong}"
        print(f"    bad: {name}: {len(r['bad'][name])}{note}")
    for e in r["good_errors"][:3]:
        print(f"    good error: {e}")
    return not r["good_errors"] and all(wrong == 0 for name, (ok, wrong) in bad_counts.items()
                                        if not name.startswith("hang-up"))


def main(argv=None):
    args = parse_args(argv)
    from flowers import testing

    goods = []
    for path in sorted(PHOTOS.glob("*/*.jpg"))[::60][:args.photos]:
        goods.append(json.dumps({"instances": [{"key": path.name, "image_bytes": {
            "b64": base64.b64encode(path.read_bytes()).decode()}}]}).encode())
    bads = [(n, p, b if isinstance(b, bytes) else b.encode()) for n, p, b in bad_requests()]
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir:
            base = args.model_dir
        else:
            from serve import build_model
            base = build_model(pathlib.Path(tmp) / "models" / "flowers")
        proc, rest_url, _grpc = testing.start_subprocess(["--model_name", "flowers", "--model_base_path", base])
        ok = True
        try:
            asyncio.run(phase(rest_url, proc.pid, goods, bads, 4, 10))  # warm-up, not reported
            for clients in (int(c) for c in args.clients.split(",")):
                ok &= report(asyncio.run(phase(rest_url, proc.pid, goods, bads, clients, args.seconds)))
            print(f"server alive: {proc.poll() is None}; load {open('/proc/loadavg').read().strip()}")
            ok &= proc.poll() is None
        finally:
            testing.stop_subprocess(proc)
            log = pathlib.Path(proc.log_path).read_text(errors="replace")
            errors = [line for line in log.splitlines() if " ERROR " in line]
            print(f"server log: {log.count('Traceback')} tracebacks, {len(errors)} ERROR lines")
            for line in errors[:3]:
                print(f"    {line[:300]}")
            os.remove(proc.log_path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
