"""Private RabbitMQ nodes (with the MQTT plugin) on loopback: one node or a two-node cluster.

Follows shared/recipes/rabbitmq-in-tests.md: every node gets its own data,
log and plugin directories, all nodes of one run share a HOME holding the
Erlang cookie and an epmd of their own on a free port, so nothing here ever
touches a system RabbitMQ or another test run.  The wrapper script runs in a
new session; ``stop()`` is a clean SIGTERM, ``kill()`` SIGKILLs the Erlang VM
(the pid in the node's pid file, checked to be ``beam*``) as a crash would.
Only processes started here are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

from tests.support.broker import free_port, wait_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
SERVER = RABBIT_BIN / "rabbitmq-server"
CTL = RABBIT_BIN / "rabbitmqctl"
USER, PASSWORD = "guest", "guest"  # the default user: allowed from loopback only


def unavailable() -> str | None:
    """Why RabbitMQ nodes cannot be started here, or None when they can."""
    if not SERVER.exists() or not CTL.exists():
        return f"rabbitmq-server is not installed ({SERVER} missing); run 'make interop' or apt-get install rabbitmq-server"
    if shutil.which("epmd") is None and not Path("/usr/bin/epmd").exists():
        return "epmd (Erlang) not found although rabbitmq-server is installed"
    return None


def _epmd_binary() -> str:
    return shutil.which("epmd") or "/usr/bin/epmd"


def _stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group we created, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Epmd:
    """An Erlang port mapper of our own on 127.0.0.1:<free port>."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "epmd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Epmd:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [_epmd_binary(), "-port", str(self.port), "-address", "127.0.0.1"],
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_port(self.port, self.proc, 10)
        return self

    def close(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, 5)
            self.proc = None

    def __repr__(self) -> str:
        return f"<Epmd 127.0.0.1:{self.port} {'running' if self.proc else 'stopped'}>"


class RabbitNode:
    """One RabbitMQ node; start/stop/kill keep its name, ports and data directory."""

    def __init__(self, workdir: Path, name: str, home: Path, epmd: Epmd) -> None:
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = f"{name}@localhost"
        self.home = home
        self.epmd = epmd
        self.amqp_port, self.dist_port, self.mqtt_port = free_port(), free_port(), free_port()
        self.log = self.dir / "server.out"
        self.pid_file = self.dir / "node.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = false\n"
            "log.console = false\n"
            "disk_free_limit.absolute = 50MB\n"
        )

    @property
    def env(self) -> dict[str, str]:
        d = self.dir
        return dict(
            os.environ,
            HOME=str(self.home),
            ERL_EPMD_PORT=str(self.epmd.port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_CONF_ENV_FILE="/dev/null",
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(d / "plugins-expand"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
        )

    def start(self, timeout: float = 90.0) -> RabbitNode:
        """Start the node and wait until its MQTT listener accepts (5-10 s here, more under load)."""
        self.pid_file.unlink(missing_ok=True)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [str(SERVER)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_port(self.mqtt_port, self.proc, timeout)
        except (RuntimeError, AssertionError) as exc:  # wait_port: it exited, or never listened
            self.stop()
            raise RuntimeError(f"RabbitMQ node {self.name} did not start: {exc}\n{self.tail()}") from None
        return self

    def tail(self, n: int = 40) -> str:
        logs = [self.log, *sorted((self.dir / "log").glob("*.log"))]
        out = []
        for p in logs:
            if p.exists():
                out.append(f"--- {p} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(out)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """rabbitmqctl against this node; raises with its output when it fails."""
        r = subprocess.run(
            [str(CTL), "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} on {self.name} failed ({r.returncode}):\n{r.stdout}{r.stderr}"
            )
        return r.stdout

    def beam_pid(self) -> int | None:
        """The Erlang VM's pid from the pid file, only if it is a live beam process."""
        try:
            pid = int(self.pid_file.read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError):
            return None
        return pid if comm.startswith("beam") else None

    def kill(self) -> None:
        """Crash the node: SIGKILL its Erlang VM; the wrapper then exits on its own."""
        pid = self.beam_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                _stop_group(self.proc, 5)
            self.proc = None

    def stop(self, timeout: float = 60.0) -> None:
        """Clean stop (SIGTERM to the wrapper, which stops the node); idempotent."""
        if self.proc is None:
            return
        _stop_group(self.proc, timeout)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RabbitNode {self.name} mqtt=127.0.0.1:{self.mqtt_port} {state}>"


class RabbitCluster:
    """``size`` nodes sharing one cookie and epmd; node 2.. join node 1 (size 1 is a single node)."""

    def __init__(self, workdir: Path, size: int = 1, prefix: str = "cea") -> None:
        self.dir = Path(workdir)
        self.home = self.dir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(f"campus-edge-agent-test-{os.getpid()}-{time.monotonic_ns()}")
        cookie.chmod(0o400)
        self.epmd = Epmd(self.dir)
        tag = f"{prefix}{os.getpid()}x{time.monotonic_ns() % 100000}"
        self.nodes = [RabbitNode(self.dir, f"{tag}n{i + 1}", self.home, self.epmd) for i in range(size)]

    def start(self) -> Self:
        try:
            self.epmd.start()
            first, *rest = self.nodes
            # boot all nodes at once (each takes 5-10 s of mostly waiting), then join them
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                for f in [pool.submit(n.start) for n in self.nodes]:
                    f.result()
            for node in rest:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.name)
                node.ctl("start_app")
                wait_port(node.mqtt_port, node.proc, 60)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]

    def node_on(self, port: int) -> RabbitNode:
        return next(n for n in self.nodes if n.mqtt_port == port)

    def close(self) -> None:
        """Stop every node (the last one first is not needed: nothing restarts them), then epmd."""
        for node in reversed(self.nodes):
            node.stop()
        self.epmd.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RabbitCluster {self.nodes!r}>"
