"""Training in a worker process, so the daemon stays small and survives a crash in training.

Two modes:

* ``per-task`` (the default on a board): a fresh worker per round, which
  exits afterwards and gives its memory (torch, the data) back;
* ``persistent``: one worker kept between rounds; saves torch's import
  (about 2 s of CPU) each round, at the cost of its resident memory.

The daemon calls :meth:`WorkerRunner.check` from its loop; the worker's
answer is read by a small thread into a queue, so nothing blocks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from protocol import DataError, ProtocolError, Task, Update, decode_message, encode_message

from ._agent import TrainingDone

__all__ = ["DataSummary", "WorkerRunner", "describe_data"]

log = logging.getLogger("genfl.edge")


@dataclass(frozen=True)
class DataSummary:
    num_samples: int
    classes: tuple[str, ...]
    label_counts: tuple[int, ...]


def describe_data(spec: str, data_dir: Path, timeout_s: float = 600.0, in_process: bool = False) -> DataSummary:
    """The device's sample count and label histogram, read by a short-lived worker (or here, ``in_process``:
    a process that hosts many simulated agents reads their small ``npz`` shards itself)."""
    if in_process:
        from .worker import describe

        info = describe(spec, data_dir)
        return DataSummary(int(info["num_samples"]), tuple(info["classes"]), tuple(info["label_counts"]))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "edge_agent.worker", "--describe", spec, "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(f"cannot start the worker that reads the data ({sys.executable}): {exc}") from exc
    if done.returncode != 0:
        raise DataError(done.stderr.strip().removeprefix("error: ") or f"describing {spec} failed")
    info = json.loads(done.stdout)
    return DataSummary(int(info["num_samples"]), tuple(info["classes"]), tuple(info["label_counts"]))


@dataclass
class _Job:
    task: Task
    done: TrainingDone
    out: Path


def _read_lines(stream: IO[str], inbox: queue.SimpleQueue[str | None]) -> None:
    for line in stream:
        inbox.put(line)
    inbox.put(None)  # the worker closed its stdout: it exited


class WorkerRunner:
    def __init__(
        self,
        device_id: str,
        data_spec: str,
        work_dir: Path,
        *,
        data_dir: Path = Path("data"),
        mode: str = "per-task",
        torch_device: str = "cpu",
        nice: int = 10,
        pool_socket: Path | None = None,
    ) -> None:
        if mode not in ("per-task", "persistent", "pool"):
            raise ValueError(f"worker mode must be per-task, persistent or pool, got {mode!r}")
        if (mode == "pool") != (pool_socket is not None):
            raise ValueError("the pool worker mode needs a pool socket, and only it")
        self.pool_socket = pool_socket
        self._connection: socket.socket | None = None
        self.device_id = device_id
        self.data_spec = data_spec
        self.data_dir = data_dir
        self.mode = mode
        self.torch_device = torch_device
        self.nice = nice
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[str] | None = None
        self._inbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._job: _Job | None = None
        self.worker_peak_rss_mb: float | None = None

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def worker_pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _spawn(self) -> subprocess.Popen[str]:
        nice = self.nice
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,  # training yields the CPU to the daemon
        )
        self._inbox = queue.SimpleQueue()
        assert process.stdout is not None
        threading.Thread(target=_read_lines, args=(process.stdout, self._inbox), daemon=True).start()
        return process

    def _job_fields(self, **fields: Any) -> dict[str, Any]:
        return {
            "data": self.data_spec,
            "data_dir": str(self.data_dir),
            "device_id": self.device_id,
            "torch_device": self.torch_device,
            **fields,
        }

    def _send_to_pool(self, job: dict[str, Any]) -> None:
        """One job to the training pool over its socket; the answer line (or EOF) lands in the inbox."""
        assert self.pool_socket is not None
        self._close_connection()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._inbox = queue.SimpleQueue()
        try:
            connection.connect(str(self.pool_socket))
            connection.sendall((json.dumps(job) + "\n").encode())
        except OSError as exc:
            connection.close()
            self._inbox.put(json.dumps({"ok": False, "error": f"the training pool at {self.pool_socket}: {exc}"}))
            return
        self._connection = connection
        stream = connection.makefile("r", encoding="utf-8")
        threading.Thread(target=_read_lines, args=(stream, self._inbox), daemon=True).start()

    def _close_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.close()
            self._connection = None

    def _send(self, job: dict[str, Any]) -> subprocess.Popen[str]:
        if self._process is None or self._process.poll() is not None:
            self._process = self._spawn()
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(job) + "\n")
        self._process.stdin.flush()
        return self._process

    def warm_up(self, timeout_s: float = 300.0) -> None:
        """Persistent mode: start the worker and let it import torch and load the data now."""
        if self.mode != "persistent":
            return
        self._send(self._job_fields(warm_up=True))
        try:
            line = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            line = None
        reply = json.loads(line) if line else {"ok": False, "error": "no answer"}
        if not reply.get("ok"):
            self.stop()
            raise DataError(f"the training worker failed to start: {reply.get('error')}")

    def start(self, task: Task, model_blob: bytes, done: TrainingDone, synthetic_blob: bytes | None = None) -> None:
        if self._job is not None:  # a newer round overtakes a late one: its result would be refused anyway
            log.warning("device %s: abandoning round %d for round %d", self.device_id, self._job.task.round, task.round)
            self._job = None
            self.stop(grace_s=0.0)
        task_path = self.work_dir / "task.bin"
        model_path = self.work_dir / "model.safetensors"
        out = self.work_dir / "update.bin"
        out.unlink(missing_ok=True)
        task_path.write_bytes(encode_message(task))
        model_path.write_bytes(model_blob)
        fields: dict[str, Any] = {"task": str(task_path), "model": str(model_path), "out": str(out)}
        synthetic_path = self.work_dir / "synthetic.safetensors"
        if synthetic_blob is not None:
            synthetic_path.write_bytes(synthetic_blob)
            fields["synthetic"] = str(synthetic_path)
        else:
            synthetic_path.unlink(missing_ok=True)
        if self.mode == "pool":
            self._send_to_pool(self._job_fields(**fields))
            self._job = _Job(task, done, out)
            log.info("device %s: the training pool trains round %d", self.device_id, task.round)
            return
        process = self._send(self._job_fields(**fields))
        if self.mode == "per-task" and process.stdin is not None:
            process.stdin.close()  # one job, then the worker exits
        self._job = _Job(task, done, out)
        log.info("device %s: worker %d training round %d", self.device_id, process.pid, task.round)

    def check(self) -> None:
        """Finish the current job if the worker answered (or died). Never blocks."""
        job = self._job
        if job is None:
            return
        try:
            line = self._inbox.get_nowait()
        except queue.Empty:
            return
        self._job = None
        if self.mode == "pool":
            self._close_connection()
            if line is None:
                job.done(job.task, "the training pool's worker ended without an answer")
                return
        elif line is None:
            code = self._process.wait() if self._process is not None else None
            self._process = None
            job.done(job.task, f"the training worker died (exit code {code})")
            return
        reply = json.loads(line)
        self.worker_peak_rss_mb = reply.get("peak_rss_mb", self.worker_peak_rss_mb)
        if self.mode == "per-task" and self._process is not None:
            self._process.wait()
            self._process = None
        if not reply.get("ok"):
            job.done(job.task, str(reply.get("error", "unknown worker error")))
            return
        try:
            update = decode_message(job.out.read_bytes(), Update)
        except (OSError, ProtocolError) as exc:
            job.done(job.task, f"the worker's update is unreadable: {exc}")
            return
        job.done(job.task, update)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the worker: close its input, wait ``grace_s`` for it to finish, then terminate it."""
        self._close_connection()
        process = self._process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
