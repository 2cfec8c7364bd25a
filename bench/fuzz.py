"""A longer run of tests/test_fuzz.py's properties: REST JSON -> tensors (documents and raw bodies)
and the image probe + in-graph header reader.

    nice -n 10 .venv/bin/python bench/fuzz.py [--seconds 120] [--max_examples 20000]

Each property runs under hypothesis until --max_examples or its share of --seconds; a failure is
counted (with its first example printed) instead of stopping the run. Prints cases tried, outcomes
and failures per property; exits 1 if any failed.
"""
import argparse
import collections
import os
import pathlib
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parents[1]
CHUNK = 200  # examples per hypothesis run; runs repeat until the time or example budget is spent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def run_property(name, strategy, prop, seconds, max_examples):
    from hypothesis import HealthCheck, given, settings

    outcomes, failures, deadline = collections.Counter(), [], time.monotonic() + seconds

    @settings(max_examples=CHUNK, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(strategy)
    def run(args):
        try:
            outcomes[prop(*args)] += 1
        except Exception as e:  # noqa: BLE001 - a failing case is what we count
            failures.append((args, f"{type(e).__name__}: {e}"))
            outcomes["FAILED"] += 1

    started = time.monotonic()
    while time.monotonic() < deadline and sum(outcomes.values()) < max_examples:
        run()  # a fresh random seed each chunk
    elapsed = time.monotonic() - started
    tried = sum(outcomes.values())
    print(f"{name}: {tried} cases in {elapsed:.0f} s, {len(failures)} failures; "
          + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    for args, error in failures[:3]:
        print(f"  e.g. {error[:300]}\n       input {repr(args)[:300]}")
    sys.stdout.flush()
    return tried, len(failures)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120, help="total budget, shared by the three properties")
    p.add_argument("--max_examples", type=int, default=20000, help="per property")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning on crafted headers is expected
    from hypothesis import strategies as st

    import test_fuzz as fz

    share = args.seconds / 3
    body = st.binary(max_size=200) | st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass"))
    results = [
        run_property("REST JSON documents -> tensors", st.tuples(fz.requests, st.sampled_from(fz.SIGNATURES)),
                     fz.check_json_request, share, args.max_examples),
        run_property("REST raw bodies -> tensors", st.tuples(body, st.sampled_from(fz.SIGNATURES)),
                     fz.check_raw_body, share, args.max_examples),
        run_property("image probe + in-graph header", st.tuples(fz.image_blobs), fz.check_image, share,
                     args.max_examples),
    ]
    tried, failed = map(sum, zip(*results))
    print(f"total: {tried} cases, {failed} failures (load {open('/proc/loadavg').read().split()[0]})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
