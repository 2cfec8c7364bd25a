"""Server-side batching of concurrent predict requests, with TF Serving's parameters.

As in TF Serving's SharedBatchScheduler: a batch closes when it holds
`max_batch_size` rows or its first request has waited `batch_timeout_micros`; it
then waits for one of `num_batch_threads` free threads (and keeps filling while it
waits); at most `max_enqueued_batches` batches may queue. Batches are padded up to
the next `allowed_batch_sizes` entry. Unlike TF Serving, a failed batch is retried
request by request, so one bad request (e.g. bytes that are not an image) fails
alone instead of failing everyone batched with it.
"""
import asyncio
import collections
import dataclasses
import logging
import os
import time

import numpy as np

from flowers.serving.errors import Code, ServingError, invalid

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Options:
    # Defaults are TF Serving's BasicBatchScheduler::Options, used for fields the file leaves out.
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple = ()

    @classmethod
    def from_proto(cls, params):
        """BatchingParameters (TF Serving's proto) -> Options, with TF Serving's checks."""
        values = {name: getattr(params, name).value for name in
                  ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
                  if params.HasField(name)}
        options = cls(**values, allowed_batch_sizes=tuple(params.allowed_batch_sizes))
        if params.pad_variable_length_inputs:
            log.warning("pad_variable_length_inputs is not supported: requests whose inputs differ in shape "
                        "beyond the batch dimension are batched separately")
        sizes = options.allowed_batch_sizes
        if options.max_batch_size < 1 or options.num_batch_threads < 1 or options.max_enqueued_batches < 1:
            raise ValueError("max_batch_size, num_batch_threads and max_enqueued_batches must be >= 1")
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != options.max_batch_size):
            raise ValueError("allowed_batch_sizes must be increasing and end with max_batch_size")
        return options


@dataclasses.dataclass
class _Task:
    inputs: dict
    size: int
    future: asyncio.Future
    enqueued: float


def concat(parts):
    """[{name: array}] -> {name: array} joined along the batch dimension."""
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def split(outputs, sizes, total):
    """{name: array[total + padding]} -> one {name: array[size]} per request."""
    for name, arr in outputs.items():
        if np.ndim(arr) == 0 or len(arr) < total:
            raise ServingError(Code.INTERNAL, f"Batched output tensor {name} does not have {total} rows")
    starts = np.cumsum([0, *sizes])
    return [{name: arr[a:b] for name, arr in outputs.items()} for a, b in zip(starts[:-1], starts[1:])]


class Scheduler:
    """Threads shared by every batch queue (TF Serving shares them across models too)."""

    def __init__(self, options, executor):
        self.options, self.executor = options, executor
        self.threads = asyncio.Semaphore(options.num_batch_threads)


class BatchQueue:
    """One queue per servable, signature and input shape; `run(inputs)` is the blocking model call."""

    def __init__(self, scheduler, run, on_batch=None):
        self.scheduler, self.run, self.on_batch = scheduler, run, on_batch
        self._tasks = collections.deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._loop_task = None
        self._running = set()  # keeps batch tasks referenced until done

    async def submit(self, inputs, size):
        opts = self.scheduler.options
        if size > opts.max_batch_size:
            raise invalid(f"Task size {size} is larger than maximum input batch size {opts.max_batch_size}")
        if self._queued_rows + size > opts.max_enqueued_batches * opts.max_batch_size:
            raise ServingError(Code.UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full")
        task = _Task(inputs, size, asyncio.get_running_loop().create_future(), time.monotonic())
        self._tasks.append(task)
        self._queued_rows += size
        self._wakeup.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._schedule())
        return await task.future

    async def _schedule(self):
        """Form batches while requests are queued; exits when idle (so unloaded models leave nothing)."""
        opts = self.scheduler.options
        while self._tasks:
            deadline = self._tasks[0].enqueued + opts.batch_timeout_micros / 1e6
            while self._queued_rows < opts.max_batch_size and (wait := deadline - time.monotonic()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except TimeoutError:
                    break
            await self.scheduler.threads.acquire()
            batch = self._take(opts.max_batch_size)
            if batch:
                running = asyncio.create_task(self._process(batch))
                self._running.add(running)
                running.add_done_callback(self._running.discard)
            else:
                self.scheduler.threads.release()

    def _take(self, limit):
        batch, rows = [], 0
        while self._tasks and rows + self._tasks[0].size <= limit:
            task = self._tasks.popleft()
            self._queued_rows -= task.size
            if not task.future.done():  # cancelled: the client went away
                batch.append(task)
                rows += task.size
        return batch

    def _padded(self, batch):
        """Concatenated inputs, padded with copies of the first row up to an allowed batch size."""
        inputs = concat([t.inputs for t in batch])
        rows = sum(t.size for t in batch)
        target = next((s for s in self.scheduler.options.allowed_batch_sizes if s >= rows), rows)
        if target > rows:
            inputs = {n: np.concatenate([a, np.repeat(a[:1], target - rows, axis=0)]) for n, a in inputs.items()}
        return inputs, rows

    def _run_batch(self, batch):
        """In a batch thread: run the batch; if it fails, run each request alone."""
        inputs, rows = self._padded(batch)
        try:
            return [(out, None) for out in split(self.run(inputs), [t.size for t in batch], rows)]
        except Exception as e:  # noqa: BLE001 - handed to the request(s)
            if len(batch) == 1:
                return [(None, e)]
        results = []
        for task in batch:  # isolate the bad request(s)
            try:
                results.append((self.run(task.inputs), None))
            except Exception as e:  # noqa: BLE001
                results.append((None, e))
        return results

    async def _process(self, batch):
        try:
            if self.on_batch:
                self.on_batch(sum(t.size for t in batch))
            loop = asyncio.get_running_loop()
            try:
                results = await loop.run_in_executor(self.scheduler.executor, self._run_batch, batch)
            except Exception as e:  # noqa: BLE001 - e.g. executor shut down
                results = [(None, e)] * len(batch)
            for task, (out, error) in zip(batch, results):
                if task.future.done():
                    continue
                if error is not None:
                    task.future.set_exception(error)
                else:
                    task.future.set_result(out)
        finally:
            self.scheduler.threads.release()
