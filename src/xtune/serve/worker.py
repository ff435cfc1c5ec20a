"""One generation at a time, from a bounded queue: the model and its KV cache serve one request, so each client gets
the answer it would get alone, and a request that finds every slot taken is refused at once (429) instead of
waiting without end. A client that goes away cancels its job: a waiting one is skipped, a running one stops at its
next token."""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any


class Job:
    """A request's generation. The worker thread runs `work(job)`; what it emits lands in `events`, read by the
    request's handler on the event loop: ("text", str), then ("done", result) or ("error", exception)."""

    def __init__(self, work: Callable[[Job], Any]):
        self.work = work
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()

    def emit(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class GenerationQueue:
    def __init__(self, slots: int):
        """`slots`: requests admitted at once, the running one included."""
        self.free = threading.Semaphore(slots)
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.finished: collections.deque[tuple[str, int]] = collections.deque(maxlen=64)  # (finish, tokens) recent
        threading.Thread(target=self._run, name="xtune-generation", daemon=True).start()

    def submit(self, job: Job) -> bool:
        """False when every slot is taken."""
        if not self.free.acquire(blocking=False):
            return False
        self.jobs.put(job)
        return True

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if not job.cancelled.is_set():
                    result = job.work(job)
                    self.finished.append((result.finish_reason, result.completion_tokens))
                    job.emit("done", result)
            except Exception as e:  # the request's own failure; the worker serves the next one
                job.emit("error", e)
            finally:
                self.free.release()
