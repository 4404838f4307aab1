"""Writing a batch run's outputs while the next batch computes, and its progress bar.

:class:`OutputWriter` hands each computed item to a small pool of writer threads (PNG encoding and file writes
release the interpreter lock, so they run beside the method's next call and the reading workers). The rows come
back in the order they finish; a bounded queue keeps at most ``window`` outcomes in memory. :class:`Progress` is
one bar of items (rate and time left) on standard error.

>>> rows = {}
>>> with OutputWriter(lambda outcome: {"id": outcome}, rows.__setitem__, workers=2) as writer:
...     for k in range(5):
...         writer.submit(k, f"item{k}")
>>> [rows[k]["id"] for k in sorted(rows)]
['item0', 'item1', 'item2', 'item3', 'item4']
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

__all__ = ["OutputWriter", "Progress", "writer_threads"]


def writer_threads() -> int:
    """Writer threads of a batch run: two, or one on a single-core machine."""
    return max(1, min(2, (os.cpu_count() or 1) - 1))


class OutputWriter:
    """Runs ``finish(outcome)`` in writer threads and passes each returned row to ``record(key, row)``.

    Rows are recorded by the thread that calls :meth:`submit`, :meth:`collect` or leaves the ``with`` block (never
    by a writer thread), so ``record`` needs no lock. Leaving the block waits for every write; an exception raised by
    ``finish`` is raised there (or at the next :meth:`submit` that waits for it).

    Args:
        finish: writes one outcome's files; returns its row.
        record: called as ``record(key, row)`` for every finished outcome.
        workers: writer threads (``0``: write in the calling thread, nothing overlaps).
        window: outcomes submitted but not yet recorded before :meth:`submit` waits for the oldest.
    """

    def __init__(
        self,
        finish: Callable[[Any], Any],
        record: Callable[[Any, Any], None],
        *,
        workers: int = 2,
        window: int = 32,
    ) -> None:
        self.finish, self.record, self.window = finish, record, max(1, window)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fusion-writer") if workers else None
        self.pending: collections.deque[tuple[Any, Future]] = collections.deque()

    def submit(self, key: Any, outcome: Any) -> None:
        """Write ``outcome`` (in a writer thread); its row is recorded under ``key``."""
        if self.pool is None:
            self.record(key, self.finish(outcome))
            return
        self.pending.append((key, self.pool.submit(self.finish, outcome)))
        while len(self.pending) > self.window:
            self._record_oldest()
        self.collect()

    def collect(self) -> int:
        """Record the rows of the writes finished so far (oldest first, stopping at one still running)."""
        count = 0
        while self.pending and self.pending[0][1].done():
            self._record_oldest()
            count += 1
        return count

    def _record_oldest(self) -> None:
        key, future = self.pending.popleft()
        self.record(key, future.result())

    def close(self) -> None:
        """Wait for every write and record its row."""
        try:
            while self.pending:
                self._record_oldest()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:  # noqa: ANN001
        if kind is None:
            self.close()
            return
        for _, future in self.pending:  # an error elsewhere: stop what has not started, let the rest finish
            future.cancel()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class Progress:
    """One progress bar of the items of a batch run (items/s and time left), on ``file`` (standard error).

    ``enabled=None`` shows it only when ``file`` is a terminal, so logs and pipes get the summary line alone.
    """

    def __init__(self, total: int, *, file: IO[str] | None = None, enabled: bool | None = None) -> None:
        from tqdm.auto import tqdm

        file = sys.stderr if file is None else file
        show = enabled if enabled is not None else bool(getattr(file, "isatty", lambda: False)())
        self.bar = tqdm(total=total, unit="item", desc="batch", file=file, disable=not show, dynamic_ncols=True)
        self.done = 0

    def update_to(self, done: int) -> None:
        """Set the number of items done (a count, so several sources can report totals)."""
        if done > self.done:
            self.bar.update(done - self.done)
            self.done = done

    def close(self) -> None:
        self.bar.close()
