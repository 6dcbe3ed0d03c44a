"""A real etcd for tests: ``ETCD_URL`` when set (CI's real mode starts one), else a throwaway ``etcd``
process on free loopback ports with its data in a temporary folder, else None (the caller skips)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import requests


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        return requests.post(f"{url}/v3/kv/range", json={"key": "AA=="}, timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def etcd_url() -> Iterator[str | None]:
    configured = os.environ.get("ETCD_URL", "")
    if configured:
        yield configured.rstrip("/")
        return
    binary = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if binary is None:
        yield None
        return
    client, peer = _free_port(), _free_port()
    url = f"http://127.0.0.1:{client}"
    with tempfile.TemporaryDirectory(prefix="etcd-test-") as data:
        command = [
            binary, "--name", "test", "--data-dir", data,
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer}",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        try:
            deadline = time.monotonic() + 15
            while not _ready(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not start (exit code {process.poll()})")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
