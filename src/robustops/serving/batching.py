"""Requests that arrive while the model is busy run together (dynamic batching).

Worker threads take the guard's work off the event loop. When one finishes a pass it takes
every request that queued meanwhile (up to ``max_inputs`` inputs) and runs them as one
:meth:`~robustops.serving.guard.Guard.handle_many`: one forward pass, one abstainer pass, one
detector step. Nothing waits for a batch to fill: a request that finds a thread idle runs at
once, alone. Under load the passes grow by themselves, and the fixed costs of a pass (thread
hand-over, the model's per-call overhead, the detector's shared-state transaction) are paid
once per pass instead of once per request.

Each request keeps its own answer, detector decision and log line. Requests of two guards
(an alias swap between them) never share a pass. A pass that raises is retried request by
request, so one request's error is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from robustops.serving.guard import Guard, Outcome, Request

__all__ = ["Batcher"]


@dataclass(eq=False)
class _Job:
    guard: Guard
    request: Request
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Outcome]


class Batcher:
    """The guard's worker threads with dynamic batching (see the module docstring).

    Args:
        max_inputs: inputs per pass at most; a request with more runs alone.
        threads: passes that may run at once (a pass that blocks, e.g. a slow model call,
            holds up only what it took, not the requests queued after it while another
            thread is free; torch releases the interpreter lock while it computes, so two
            passes also use two cores).
        name: the threads' name prefix.
        on_pass: called with the number of requests of each pass (e.g. a metric).
    """

    def __init__(
        self,
        max_inputs: int = 64,
        *,
        threads: int = 2,
        name: str = "robustops-guard",
        on_pass: Callable[[int], None] | None = None,
    ) -> None:
        if max_inputs < 1:
            raise ValueError(f"max_inputs must be >= 1, got {max_inputs}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.max_inputs, self.n_threads, self.name = max_inputs, threads, name
        self.on_pass = on_pass
        self.passes = 0
        """Passes run so far."""
        self.requests = 0
        """Requests run so far (``requests / passes``: the mean requests per pass)."""
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, guard: Guard, request: Request) -> asyncio.Future[Outcome]:
        """Queue ``request`` for ``guard``; the future (of the running event loop) gets its
        :class:`Outcome`, or the exception its run raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        if len(self._threads) < self.n_threads:
            self._start_threads()
        self._queue.put(_Job(guard, request, loop, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the threads (a later :meth:`submit` starts new
        ones: an application's lifespan may run more than once)."""
        with self._lock:
            threads, self._threads = self._threads, []
            for _ in threads:
                self._queue.put(None)
        for thread in threads:
            thread.join(timeout)

    def _start_threads(self) -> None:
        with self._lock:
            while len(self._threads) < self.n_threads:
                thread = threading.Thread(
                    target=self._run, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _run(self) -> None:
        carry: _Job | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            if first is None:
                return
            jobs, n, carry = [first], first.request.batch.n, None
            stop = False
            while n < self.max_inputs:  # what queued meanwhile, as far as it fits
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                if n + job.request.batch.n > self.max_inputs:
                    carry = job  # it starts the next pass
                    break
                jobs.append(job)
                n += job.request.batch.n
            self._run_pass(jobs)
            if stop:  # (a pass that met the sentinel carries nothing over)
                return

    def _run_pass(self, jobs: list[_Job]) -> None:
        # consecutive jobs of one guard run together (a swap splits the pass)
        start = 0
        for end in range(1, len(jobs) + 1):
            if end == len(jobs) or jobs[end].guard is not jobs[start].guard:
                self._run_group(jobs[start:end])
                start = end

    def _run_group(self, jobs: list[_Job]) -> None:
        with self._lock:
            self.passes += 1
            self.requests += len(jobs)
        if self.on_pass is not None:
            self.on_pass(len(jobs))
        guard = jobs[0].guard
        try:
            outcomes = guard.handle_many([j.request for j in jobs])
        except Exception as exc:  # each request gets its own error, below
            if len(jobs) == 1:
                _settle(jobs[0], exc=exc)
                return
            for job in jobs:  # one request's error must not fail the others
                try:
                    _settle(job, result=guard.handle_many([job.request])[0])
                except Exception as one:
                    _settle(job, exc=one)
            return
        for job, outcome in zip(jobs, outcomes, strict=True):
            _settle(job, result=outcome)


def _settle(job: _Job, *, result: Outcome | None = None, exc: BaseException | None = None) -> None:
    """Hand the result (or the error) to the job's event loop."""

    def put() -> None:
        if job.future.done():  # cancelled meanwhile
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
        job.loop.call_soon_threadsafe(put)
