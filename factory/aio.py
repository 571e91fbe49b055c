"""One event loop for sync code that drives async teachers.

HTTP clients bind their connections to the loop that opened them: a client used on
one `asyncio.run` loop and closed on another fails with "Event loop is closed". So a
run (or a stage used on its own) keeps ONE loop for its whole life: every batch, the
judge's and the tasks', and the final `teacher.close()` run on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoop:
    """A persistent asyncio loop that sync code runs coroutines on, one at a time."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` to completion on this loop (from a helper thread when the caller is inside a loop)."""
        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("this EventLoop is closed")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(coroutine)
        # Called from async code (e.g. a notebook): the same loop object, driven from another thread.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(self._loop.run_until_complete, coroutine).result()

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            # A run stopped mid-batch (Ctrl-C) leaves tasks pending: cancel them and let them
            # finish, as asyncio.run does, instead of "Task was destroyed but it is pending!".
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
        finally:
            self._loop.close()


_default: EventLoop | None = None
_default_lock = threading.Lock()


def default_loop() -> EventLoop:
    """The process-wide loop for stages and teachers used outside a run (a run brings its own)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = EventLoop()
        return _default
