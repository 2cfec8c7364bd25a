"""What a preprocess run leaves per output prefix, besides its records: PREFIX.rejected.csv (every
skipped row with its reason) and PREFIX.metadata.json (written after every write: read = written +
rejected), and the summary it prints."""
import csv
import io
import logging

from flowers.core import records, storage

_LOGGER = logging.getLogger(__name__)

REJECTED_HEADER = "line,input,reason,message"


def to_csv_line(reject):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([reject.line, reject.input, reject.reason, reject.message])
    return buf.getvalue()


def write_all_metadata(_, counts, outputs_done, jobs, base):
    del outputs_done  # a side input only so that this step waits for every write
    for split, (csv_path, prefix) in enumerate(jobs):
        mine = {kind: n for (s, kind), n in counts if s == split}
        read, written = mine.pop("read", 0), mine.pop("written", 0)
        counts_ = {"read": read, "written": written, "rejected": dict(sorted(mine.items()))}
        records.write_metadata(prefix, dict(base, input_path=csv_path, counts=counts_))


def rejected_path(prefix):
    return f"{prefix}.rejected.csv"


def remove_old_outputs(prefix):
    """A rerun with fewer shards must not leave old shards behind for PREFIX-*.tfrecord.gz."""
    old = storage.glob(records.shard_pattern(prefix))
    old += [p for p in (records.metadata_path(prefix), rejected_path(prefix)) if storage.exists(p)]
    for path in old:
        storage.gfile.remove(path)
    if old:
        _LOGGER.info("removed %d old output file(s) of %s", len(old), prefix)


def print_summary(prefixes, metadata, elapsed):
    for prefix, meta in zip(prefixes, metadata):
        c = meta["counts"]
        rejected = ", ".join(f"{n} {reason}" for reason, n in c["rejected"].items()) or "none"
        print(f"{prefix}: read {c['read']}, written {c['written']}, "
              f"rejected {sum(c['rejected'].values())} ({rejected})")
        if c["rejected"]:
            print(f"  rejected rows listed in {rejected_path(prefix)}")
    read = sum(m["counts"]["read"] for m in metadata)
    written = sum(m["counts"]["written"] for m in metadata)
    print(f"{written} of {read} images embedded in {elapsed:.1f} s: {written / elapsed:.1f} images/s "
          f"({metadata[0]['backbone']})")
