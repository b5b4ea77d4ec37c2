"""``imgshare serve``: a supervisor that owns the data folder, and worker processes that serve.

One process has one GIL, so the server runs one worker process per core
(docs/design.md, decision 8). The supervisor:

1. takes the data folder (``app.prepare``: its lock before anything else, the
   certificates, the storage key, the catalog) and sweeps what a crash left;
2. opens the listening socket, and forks ``workers`` processes that accept on it
   (``listen_mode = "shared"``, the default: one socket, the kernel wakes one waiting
   worker per connection), or on sockets of their own bound with SO_REUSEPORT
   (``"reuseport"``: the kernel spreads connections by their addresses);
3. watches them: a worker that dies is logged, its reservations of uploads in flight
   are dropped at once, and it is replaced (a worker that keeps dying within a second
   of its start stops the server instead of looping);
4. on SIGTERM or SIGINT, tells every worker to drain (they finish their uploads for
   ``shutdown_grace`` seconds, as a single server did), waits for them, and exits;
5. on SIGHUP, checks that the certificate and key load, then has every worker use
   them for new connections; open connections keep the identity they started with.

The workers inherit the lock's descriptor, so the data folder stays locked while any
of them lives, and they ask the kernel to stop them if the supervisor dies. Every log
line carries ``worker=N`` (the supervisor's carry none), and all go to one stream.
It also runs the sweep again every ``sweep_after`` seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from types import FrameType

from argon2 import PasswordHasher

from imgshare import logs
from imgshare.errors import ImgshareError
from imgshare.logs import fields
from imgshare.server import app
from imgshare.server.config import ServerSettings
from imgshare.server.network import Server
from imgshare.store import open_store

log = logging.getLogger(__name__)

#: A worker that dies sooner than this after its start counts as crashing at start.
_EARLY_DEATH = 1.0
#: This many early deaths in a row stop the server (a broken setting, not bad luck).
_MAX_EARLY_DEATHS = 5
_PR_SET_PDEATHSIG = 1
_HANDLED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@dataclass
class _Worker:
    index: int
    pid: int
    started: float
    listener: socket.socket


class Supervisor:
    """Runs ``settings.worker_count`` workers until a stop signal (see the module)."""

    def __init__(
        self, settings: ServerSettings, password_hasher: PasswordHasher | None = None
    ) -> None:
        self.settings = settings
        self.password_hasher = password_hasher
        self.workers: dict[int, _Worker] = {}  # by pid
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._early_deaths = 0
        self._open: list[socket.socket] = []  # this process's listening sockets

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; return the exit status. Raises
        ``ImgshareError`` if the server cannot start."""
        settings = self.settings
        count = settings.worker_count
        self._install_signals()
        lock, store = app.prepare(settings)
        try:
            app.sweep_at_start(store)
            store.close()  # no database connection may cross a fork
            listeners = self._open = self._listeners(count)
            host, port = listeners[0].getsockname()[:2]
            log.info(
                "listening on %s:%d",
                host,
                port,
                extra=fields(data=str(settings.data), inbox=settings.inbox, workers=count),
            )
            for index in range(count):
                self._spawn(index, listeners[index % len(listeners)], count)
            return self._watch(count)
        finally:
            self._stop_workers()
            lock.release()

    # -- the supervisor's own loop ----------------------------------------------------

    def _install_signals(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self._stop.set()

        def reload(signum: int, frame: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _listeners(self, count: int) -> list[socket.socket]:
        settings = self.settings
        if settings.listen_mode == "shared":
            return [app.listen(settings.host, settings.port)]
        first = app.listen(settings.host, settings.port, reuse_port=True)
        port = first.getsockname()[1]  # the same port for all, even when asked for 0
        return [first] + [
            app.listen(settings.host, port, reuse_port=True) for _ in range(count - 1)
        ]

    def _watch(self, count: int) -> int:
        next_sweep = time.monotonic() + self.settings.sweep_after
        while not self._stop.wait(0.2):
            if self._reload.is_set():
                self._reload.clear()
                self._forward_reload()
            self._reap(count)
            if self._early_deaths >= _MAX_EARLY_DEATHS:
                log.error("workers keep dying at start; stopping (see the lines above)")
                return 1
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.settings.sweep_after
                self._sweep()
        log.info("stopping", extra=fields(workers=len(self.workers)))
        return 0

    def _reap(self, count: int) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            how = _describe(status)
            log.error(
                "worker %d (pid %d) %s; starting another",
                worker.index,
                pid,
                how,
                extra=fields(worker_pid=pid),
            )
            self._forget(pid)
            early = time.monotonic() - worker.started < _EARLY_DEATH
            self._early_deaths = self._early_deaths + 1 if early else 0
            if self._early_deaths < _MAX_EARLY_DEATHS and not self._stop.is_set():
                if early:
                    time.sleep(0.2 * self._early_deaths)
                self._spawn(worker.index, worker.listener, count)

    def _forget(self, pid: int) -> None:
        """What a dead worker held: its reservations and its temp files."""
        try:
            with open_store(app.store_config(self.settings, None)) as store:
                dropped, temps = store.forget_process(pid)
        except ImgshareError as exc:  # they lapse with their lease, the sweep takes them
            log.warning("cannot clean up after a dead worker: %s", exc)
            return
        if dropped or temps:
            log.info(
                "cleaned up after a dead worker",
                extra=fields(uploads_in_flight=dropped, temp_files=temps),
            )

    def _sweep(self) -> None:
        try:
            with open_store(app.store_config(self.settings, None)) as store:
                store.sweep()
        except ImgshareError as exc:
            log.warning("sweep failed: %s", exc)

    def _forward_reload(self) -> None:
        try:
            app.load_identity(self.settings)
        except ImgshareError as exc:
            log.error("certificate not reloaded, the old one stays in use: %s", exc)
            return
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        log.info("certificate and key reloading", extra=fields(workers=len(self.workers)))

    def _stop_workers(self) -> None:
        for listener in self._open:  # the port closes once the workers close theirs
            listener.close()
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace + 10.0
        while self.workers and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.workers.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in list(self.workers):  # a worker that would not stop
            log.error("worker (pid %d) did not stop in time; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.workers.clear()

    # -- a worker ---------------------------------------------------------------------

    def _spawn(self, index: int, listener: socket.socket, count: int) -> None:
        parent = os.getpid()
        # A signal that lands between the fork and the worker's own handlers would
        # run the supervisor's handlers in the worker: hold signals back until then.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
        finally:
            if os.getpid() == parent:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
        if pid == 0:
            status = 1
            try:
                status = _worker_main(
                    self.settings, listener, index, count, self.password_hasher, parent
                )
            except BaseException:  # a worker must never return into the supervisor's code
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(status)
        self.workers[pid] = _Worker(index, pid, time.monotonic(), listener)


def _worker_main(
    settings: ServerSettings,
    listener: socket.socket,
    index: int,
    count: int,
    password_hasher: PasswordHasher | None,
    supervisor: int,
) -> int:
    """The life of one worker process; returns its exit status."""
    _die_with_parent(supervisor)
    logs.label_process(worker=index)
    stop = threading.Event()
    reload = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def request_reload(signum: int, frame: FrameType | None) -> None:
        reload.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_reload)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)  # held back since the fork
    try:
        server = app.build_worker(
            settings, listener, workers=count, password_hasher=password_hasher, stop=stop
        )
    except ImgshareError as exc:
        log.error("worker cannot start: %s", exc)
        return 1
    server.on_housekeeping(lambda: _reload_if_asked(server, settings, reload))
    try:
        server.serve_forever()
    finally:
        server.stop(settings.shutdown_grace)
        server.service.close()
    return 0


def _reload_if_asked(server: Server, settings: ServerSettings, asked: threading.Event) -> None:
    if not asked.is_set():
        return
    asked.clear()
    try:
        server.reload(app.load_identity(settings))
    except ImgshareError as exc:
        log.error("certificate not reloaded, the old one stays in use: %s", exc)


def _die_with_parent(supervisor: int) -> None:
    """Ask Linux to send SIGTERM to this process when the supervisor dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
