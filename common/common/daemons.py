"""Background threads that belong to a process, not to the code that imported them."""

from __future__ import annotations

import os
import threading


class PerProcessDaemon:
    """A daemon thread running :meth:`run`, started by the first :meth:`start` in each process: a forked
    child (every gunicorn worker, which loads the application itself) gets its own, since a fork copies no
    threads. Any number of threads may call :meth:`start` at once; one thread is started."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pid = 0
        self._start_lock = threading.Lock()

    def start(self) -> None:
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        threading.Thread(target=self.run, name=self.name, daemon=True).start()

    def run(self) -> None:
        raise NotImplementedError
