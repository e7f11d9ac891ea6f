"""The stages around ``delit encode``'s encoder: decoding in worker threads, background writes.

``ordered_map`` runs a function over an iterable in a thread pool and yields the results in
input order, with a bounded number in flight (PNG/EXR decoding, resampling and torch ops
release the GIL, so threads decode in parallel without pickling samples). ``BackgroundWriter``
takes finished blocks through a bounded queue and writes them in one thread; the first
error it meets is raised in the caller at the next ``submit`` or at the end.
``StageClock`` adds up how long each stage was busy, so a run can say which one limits it.
With ``workers=0`` / ``enabled=False`` both run in the caller's thread (the plain path).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


@dataclass
class StageClock:
    """Busy seconds per stage name (thread-safe; stages may overlap in time)."""

    seconds: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def get(self, name: str) -> float:
        with self._lock:
            return self.seconds.get(name, 0.0)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn(item)`` for each item, in order; on ``workers`` threads (0: in this thread).

    At most ``2 * workers`` items are in flight; an exception from ``fn`` is raised here
    at that item's turn.
    """
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    depth = 2 * workers
    with ThreadPoolExecutor(workers, thread_name_prefix="delit-decode") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class BackgroundWriter:
    """Call ``write(*args)`` for each ``submit(*args)`` in one background thread, in order.

    Use as a context manager: leaving it writes what is queued and joins the thread, then
    raises the writer's error (unless an exception is already on its way out, which wins).
    After an error the writer drops what is still queued. ``depth``: queued items at most
    (a full queue blocks ``submit``; the time spent there is ``waited``).
    """

    def __init__(self, write: Callable[..., None], enabled: bool = True, depth: int = 2):
        self._write = write
        self.enabled = enabled
        self.waited = 0.0  # seconds submit() spent blocked on a full queue
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="delit-writer", daemon=True)

    def __enter__(self) -> BackgroundWriter:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.enabled:
            self._put(_STOP, check=False)
            self._thread.join()
        if exc_type is None:
            self._raise_error()

    def submit(self, *args: object) -> None:
        """Queue one write (or, when not enabled, write now)."""
        if not self.enabled:
            self._write(*args)
            return
        self._raise_error()
        start = time.perf_counter()
        self._put(args, check=True)
        self.waited += time.perf_counter() - start

    def _put(self, item: object, check: bool) -> None:
        while True:
            if check:
                self._raise_error()
            if not self._thread.is_alive():
                return
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # drop the rest after a failure, but keep draining
            try:
                self._write(*item)
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc
