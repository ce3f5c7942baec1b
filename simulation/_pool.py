"""A training pool for hosts that run many agents: torch is imported once, each job runs in a fork of it.

``python -m simulation.pool --socket PATH --slots K`` imports torch, the models
and the training code, then listens on a Unix socket. Each connection brings
one job (the same JSON line the training worker reads on stdin); the pool
forks a child for it, which already holds torch (copy-on-write), runs the job,
answers one JSON line and exits, so its memory goes back as after a per-task
worker. At most ``K`` children train at once; the others wait their turn in
the order they connected.

Agents keep their own process, MQTT session, state folder and data; only the
trainer is shared (``genfl-edge run --worker pool --pool-socket PATH``). A
board does not need it: it runs one agent, with a per-task worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("genfl.edge")

__all__ = ["serve_pool"]

_MAX_JOB_BYTES = 64 * 1024


def _read_job(connection: socket.socket) -> dict[str, Any] | None:
    data = b""
    while not data.endswith(b"\n") and len(data) < _MAX_JOB_BYTES:
        piece = connection.recv(4096)
        if not piece:
            break
        data += piece
    try:
        job = json.loads(data)
    except ValueError:
        return None
    return job if isinstance(job, dict) else None


def _child(connection: socket.socket, job: dict[str, Any]) -> None:
    """In the fork: run one job and answer it (never returns)."""
    from edge_agent.worker import answer

    try:
        reply = answer(job, {})
        connection.sendall((json.dumps(reply) + "\n").encode())
    finally:
        os._exit(0)


def _warm_up() -> None:
    """Do once, here, what torch otherwise does lazily in every child: a first optimizer step imports
    ``torch._dynamo`` (1.7 s of the 1.9 s a digits job took in a fork that had not done it)."""
    import torch

    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([parameter], lr=0.1, momentum=0.9)
    (parameter * parameter).sum().backward()
    optimizer.step()


def serve_pool(socket_path: Path, slots: int, threads: int = 1) -> None:
    """Preload torch and the training code, then fork one child per job, ``slots`` at a time."""
    import torch

    from edge_agent import _training  # noqa: F401  (the models and the training loop, imported once)

    torch.set_num_threads(threads)
    _warm_up()
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    os.chmod(socket_path, 0o600)
    listener.listen(1024)
    children: set[int] = set()
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        listener.close()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"training pool ready on {socket_path} ({slots} slots)", flush=True)
    while not stopping:
        while len(children) >= slots:  # a free slot first: wait for a child to finish
            pid, _ = os.waitpid(-1, 0)
            children.discard(pid)
        try:
            connection, _ = listener.accept()
        except OSError:
            break  # closed by the signal handler
        job = _read_job(connection)
        if job is None:
            connection.close()
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            _child(connection, job)
        connection.close()
        children.add(pid)
        while children:  # reap whoever finished, without waiting
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    socket_path.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.pool")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    threads = int(os.environ.get("GENFL_TORCH_THREADS", "1"))
    if args.slots < 1:
        print("error: --slots must be at least 1", file=sys.stderr)
        return 2
    serve_pool(args.socket, args.slots, threads)
    return 0
