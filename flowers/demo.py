"""`make demo`, after `pipeline.py run --local`: serve what the pipeline deployed, predict the
sample photos it held out of training, print the results."""
import argparse
import pathlib
import sys

from flowers import testing
from flowers.core import defaults
from flowers.data import rows as csv_rows
from flowers.predict import client

ROOT = pathlib.Path(__file__).resolve().parents[1]


def held_out_rows(workdir):
    """The newest local run's eval_set.csv rows: photos the model did not train on."""
    csvs = sorted((workdir / "pipeline_root").glob("*/import-data/dataset/eval_set.csv"),
                  key=lambda p: p.stat().st_mtime)
    if not csvs:
        raise SystemExit(f"no pipeline run under {workdir}; run `python pipeline.py run --local` first")
    rows, _ = csv_rows.read_rows(str(csvs[-1]))
    return [(row.uri, row.labels[0]) for row in rows]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=str(ROOT / "demo-output"))
    args = parser.parse_args(argv)
    workdir = pathlib.Path(args.workdir)
    config = workdir / "serving" / "models.config"
    if not config.exists():
        raise SystemExit(f"{config} missing: the pipeline deployed nothing (see its gate's reason)")
    rows = held_out_rows(workdir)
    # polling models.config, as the README's command: `flowers versions set-default` takes effect
    with testing.running(["--model_config_file", str(config), "--model_config_file_poll_wait_seconds", "5"]) \
            as (rest_url, grpc_addr):
        print(f"serving {config} at {rest_url} (REST) and {grpc_addr} (gRPC)")
        status = client.RestClient(rest_url).status(defaults.MODEL_NAME, label=defaults.STABLE)
        print(f"stable -> version {status['model_version_status'][0]['version']}")
        preds = client.RestClient(rest_url).predict([open(uri, "rb").read() for uri, _ in rows],
                                                    keys=[uri for uri, _ in rows], label="stable")
    right = 0
    for (uri, truth), p in zip(rows, preds):
        right += p["label"] == truth
        print(f"{'ok ' if p['label'] == truth else 'BAD'} {pathlib.Path(uri).name:32} truth {truth:11} "
              f"predicted {p['label']:11} score {max(p['scores']):.3f}")
    print(f"{right}/{len(rows)} held-out photos predicted right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
