"""Progress of a long local step: a tqdm bar (total, rate, ETA) on a terminal, a plain line
every ~10% otherwise (logs, CI). Beam steps call `tick` from a Map: with the local in-process
runner that is this process; on Dataflow the workers are elsewhere and nothing is shown."""
import sys
import time

_current = None


class Progress:
    def __init__(self, total, what="images", stream=None):
        self.total, self.what, self.stream = total, what, stream or sys.stderr
        self.done, self.start, self._next_line = 0, time.monotonic(), max(1, total // 10)
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=" " + what, file=self.stream, leave=False)

    def update(self, n=1):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.done >= self._next_line or self.done == self.total:
            elapsed = time.monotonic() - self.start
            eta = elapsed / self.done * max(self.total - self.done, 0)
            print(f"{self.done}/{self.total} {self.what}, {elapsed:.0f} s, ETA {eta:.0f} s", file=self.stream,
                  flush=True)
            self._next_line = self.done + max(1, self.total // 10)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def start(total, what="images"):
    global _current
    _current = Progress(total, what)
    return _current


def tick(element):
    """beam.Map(tick): counts one element on the current local bar; returns it unchanged."""
    if _current is not None:
        _current.update()
    return element


def stop():
    global _current
    if _current is not None:
        _current.close()
    _current = None
