"""The single-machine Slurm cluster of slurm/local-cluster/, started on free loopback ports in a folder of one's
own and stopped by its pid files: what the tests and benchmarks run their jobs on."""

from __future__ import annotations

import os
import random
import socket
import subprocess
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "slurm" / "local-cluster"
PORTS = 13  # slurmctld, slurmdbd, MariaDB, ..., slurmd node1 and node2 (start.sh: base, +1, +2, +11, +12)


def free_port_block(n: int = PORTS, low: int = 30000, high: int = 39000) -> int:
    """The first port of n consecutive free loopback ports (below the training rendezvous ports, 20000 + job id)."""
    for _ in range(100):
        base = random.randrange(low, high)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports in [{low}, {high})")


class LocalCluster:
    def __init__(self, state: Path):
        self.state = Path(state)
        self.conf = self.state / "etc" / "slurm.conf"
        self._env = {**os.environ, "SLURM_LOCAL_PORT": str(free_port_block())}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}  # for Slurm commands against this cluster

    def start(self) -> "LocalCluster":
        res = subprocess.run([str(SCRIPTS / "start.sh"), str(self.state)], env=self._env, capture_output=True,
                             text=True)
        if res.returncode != 0:
            raise RuntimeError(f"the local cluster did not start:\n{res.stderr[-3000:]}")
        return self

    def stop(self, purge: bool = True) -> None:
        subprocess.run([str(SCRIPTS / "stop.sh"), str(self.state)] + (["--purge"] if purge else []), env=self._env,
                       capture_output=True)

    def cmd(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=True).stdout

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
