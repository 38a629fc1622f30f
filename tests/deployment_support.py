"""Plumbing for the localhost deployment test: ports, Flower CLI config, supervised processes.

:class:`ProcessSupervisor` starts every process of the test with its output in a log file,
remembers each one and every descendant it has seen (as :class:`psutil.Process`, which notices
PID reuse), and stops all of them by PID: SIGTERM, wait, SIGKILL. Flower's processes start
more processes (SuperExec, ``flwr-serverapp``, one ``flwr-clientapp`` per message) and some of
them in a new session, so descendants are looked up often and, as a last resort, by a marker
in their environment that they inherit from the test.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from sim.simulation import terminate_then_kill

#: Seconds a process gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE = 10.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(port: int, deadline: float, alive: subprocess.Popen[bytes]) -> bool:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``.

    Returns ``False`` when ``alive`` exits or the monotonic ``deadline`` passes first.
    """
    while time.monotonic() < deadline and alive.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.2)
    return False


def write_flower_config(flwr_home: Path, connection: str, address: str, ca_cert: Path) -> Path:
    """Write ``FLWR_HOME/config.toml`` with one TLS SuperLink connection, the default one."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        "[superlink]\n"
        f'default = "{connection}"\n'
        "\n"
        f"[superlink.{connection}]\n"
        f'address = "{address}"\n'
        f'root-certificates = "{ca_cert}"\n',
        encoding="utf-8",
    )
    return path


def toml_config(values: Mapping[str, bool | int | float | str]) -> str:
    """``key=value ...`` for ``--run-config`` / ``--node-config`` (strings single-quoted)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            if "'" in value or "\n" in value:
                raise ValueError(f"{key}: {value!r} cannot be a TOML literal string")
            text = f"'{value}'"
        else:
            text = repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def json_output(stdout: str) -> Any:
    """The JSON document a ``flwr ... --format json`` command printed."""
    start = stdout.find("{")
    if start < 0:
        raise ValueError(f"no JSON in output: {stdout[-2000:]!r}")
    return json.loads(stdout[start:])


@dataclass(frozen=True)
class Finished:
    """A command the supervisor ran to completion."""

    code: int | None
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}"


@dataclass
class Started:
    """A process the test started, and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


@dataclass
class ProcessSupervisor:
    """Starts processes with their output in files; stops them and everything they started.

    Parameters
    ----------
    log_dir
        Where ``<name>.out`` (stdout) and ``<name>.log`` (stderr, or both) go.
    env
        The environment of every process (``start(..., env=...)`` adds to it).
    cwd
        Their working directory.
    marker
        ``(variable, prefix)``: a process whose environment has ``variable`` starting with
        ``prefix`` was started by this test (it inherited it), wherever it was re-parented.
    """

    log_dir: Path
    env: Mapping[str, str]
    cwd: Path
    marker: tuple[str, str] | None = None
    started: dict[str, Started] = field(default_factory=dict)
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        split_output: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the background.

        Output goes to ``log_dir/<name>.log``; with ``split_output``, stdout goes to
        ``log_dir/<name>.out`` instead.
        """
        if name in self.started:
            raise ValueError(f"a process named {name!r} was already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stdout_path = self.log_dir / f"{name}.out"
        stderr_path = self.log_dir / f"{name}.log"
        with stderr_path.open("wb") as err, stdout_path.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdout=out if split_output else err,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=cwd or self.cwd,
                env={**self.env, **(env or {})},
            )
        self.started[name] = Started(name, popen, stdout_path, stderr_path)
        with contextlib.suppress(psutil.NoSuchProcess):
            self.seen[popen.pid] = psutil.Process(popen.pid)
        return popen

    def run(
        self,
        name: str,
        argv: Sequence[str],
        timeout: float,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Finished:
        """Run ``argv`` to completion (stopped after ``timeout`` seconds)."""
        popen = self.start(name, argv, env=env, cwd=cwd, split_output=True)
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(name)
        return self.finished(name)

    def wait(self, name: str, timeout: float) -> Finished:
        """Wait for a started process to exit (stopped after ``timeout`` seconds)."""
        popen = self.started[name].popen
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(name)
            return Finished(None, self._read(self.started[name].stdout), self.output(name))
        return self.finished(name)

    def finished(self, name: str) -> Finished:
        """Exit code (``None`` while running) and output of a started process."""
        started = self.started[name]
        return Finished(
            started.popen.poll(), self._read(started.stdout), self._read(started.stderr)
        )

    def output(self, name: str) -> str:
        """Everything the named process wrote to its log so far."""
        return self._read(self.started[name].stderr)

    def unique(self, stem: str) -> str:
        """A process name starting with ``stem`` that is not taken yet."""
        index = 1
        while f"{stem}-{index}" in self.started:
            index += 1
        return f"{stem}-{index}"

    def track(self) -> None:
        """Remember the current descendants of every started process."""
        for started in self.started.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(started.popen.pid).children(recursive=True):
                    self.seen.setdefault(child.pid, child)

    def stop(self, name: str) -> None:
        """Stop a process and its descendants by PID (SIGTERM, wait, SIGKILL); reap it."""
        started = self.started[name]
        self.track()
        family: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(started.popen.pid)
            family = [root, *root.children(recursive=True)]
        terminate(family)
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.popen.wait(timeout=TERMINATE_GRACE)
        if started.popen.poll() is None:
            started.popen.kill()
            started.popen.wait(timeout=TERMINATE_GRACE)

    def stop_all(self) -> None:
        """Stop every started process (the latest first) and anything they started."""
        self.track()
        for name in reversed(list(self.started)):
            self.stop(name)
        # descendants re-parented before they were seen, or whose parent went first
        terminate([p for p in self.seen.values() if alive(p)] + self.marked())

    def marked(self) -> list[psutil.Process]:
        """Live processes that carry this test's environment marker."""
        if self.marker is None:
            return []
        variable, prefix = self.marker
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get(variable, "").startswith(prefix) and alive(process):
                    found.append(process)
        return found

    def listening(self) -> set[tuple[str, str, int]]:
        """(program, address, port) of every TCP socket a live process of the test listens on."""
        self.track()
        found = set()
        for process in self.seen.values():
            with contextlib.suppress(psutil.Error):
                sockets = (
                    process.net_connections(kind="tcp")
                    if hasattr(process, "net_connections")
                    else process.connections(kind="tcp")  # psutil < 6
                )
                program = Path(cmdline(process)[1] if len(cmdline(process)) > 1 else "?").name
                for sock in sockets:
                    if sock.status == psutil.CONN_LISTEN:
                        found.add((program, str(sock.laddr.ip), int(sock.laddr.port)))
        return found

    def leftovers(self) -> list[str]:
        """Processes started or seen by this supervisor (or marked) that are still alive."""
        live = {p.pid: p for p in self.seen.values() if alive(p)}
        live.update({p.pid: p for p in self.marked()})
        return [f"{pid} {' '.join(cmdline(p))[:200]}" for pid, p in sorted(live.items())]

    def logs(self, tail: int = 3000) -> str:
        """The end of every process's output, for an assertion message."""
        parts = []
        for name, started in self.started.items():
            text = self._read(started.stderr)
            if started.stdout.exists() and started.stdout.stat().st_size:
                text = self._read(started.stdout) + text
            parts.append(f"----- {name} (exit {started.popen.poll()}) -----\n{text[-tail:]}")
        return "\n".join(parts)

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def alive(process: psutil.Process) -> bool:
    """Whether the process still runs (zombies count as gone: they hold no resources)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cmdline(process: psutil.Process) -> list[str]:
    """The process's command line, or ``[]`` when it is gone or not ours to read."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def terminate(processes: Sequence[psutil.Process]) -> None:
    """SIGTERM each process, wait up to :data:`TERMINATE_GRACE`, SIGKILL the rest."""
    terminate_then_kill(processes, TERMINATE_GRACE)


@contextlib.contextmanager
def supervised(
    log_dir: Path,
    env: Mapping[str, str],
    cwd: Path,
    marker: tuple[str, str] | None = None,
) -> Iterator[ProcessSupervisor]:
    """A :class:`ProcessSupervisor` whose processes are all stopped on exit, however it exits."""
    supervisor = ProcessSupervisor(log_dir, env, cwd, marker)
    try:
        yield supervisor
    finally:
        supervisor.stop_all()
