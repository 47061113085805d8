"""Real processes for the fault suite and the scale benchmark: a redis-server, Celery workers, beat.

Each runs in its own session (process group), so a test can SIGKILL a whole worker with its pool
processes, as an orchestrator does to a container. Everything listens on loopback only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy and return it; AssertionError naming `what` after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A throwaway redis-server on a free loopback port, without persistence, that can be stopped and restarted."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(self._answers, 10, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def shutdown_nosave(self) -> None:
        """Stop Redis the way a crash or a restart without persistence does: the data is gone."""
        with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it goes down
            self.client().shutdown(nosave=True)
        if self.process is not None:
            self.process.wait(timeout=10)
            self.process = None

    def pause(self) -> None:
        """Freeze Redis: connections are accepted by the kernel but nothing answers (a hung server)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def queue_length(self, queue: str = "steps") -> int:
        return int(self.client().llen(queue))

    def stop(self) -> None:
        if self.process is not None:
            with_signal(self.process, signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def with_signal(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        os.kill(process.pid, sig)


class CeleryProcess:
    """`celery worker` or `celery beat` as production runs it, with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, ready_marker: str = "ready.", timeout: float = 60) -> CeleryProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill_all() reaches the pool too
        )
        log.close()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"celery {self.args[0]} exited:\n{self.log()[-3000:]}")
            return ready_marker in self.log(offset)

        wait_until(ready, timeout, f"celery {self.args[0]} to start")
        return self

    def log(self, offset: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")

    def pool_pids(self) -> list[int]:
        import psutil

        return [child.pid for child in psutil.Process(self.pid).children()]

    def kill_all(self) -> None:
        """SIGKILL the main process and its pool at once: nothing gets to clean up or re-queue."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self, timeout: float = 15) -> None:
        """Warm shutdown (SIGTERM to the main process, which lets running tasks end), then SIGKILL."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        # Pool processes that outlived their parent, if any.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None


def worker_args(name: str, concurrency: int = 2, queues: str = "steps,maintenance") -> list[str]:
    return [
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "-l",
        "info",
        "--without-mingle",
        "--without-gossip",
    ]


def beat_args(workdir: Path) -> list[str]:
    return ["beat", "-l", "info", "-s", str(workdir / "celerybeat-schedule"), "--pidfile="]
