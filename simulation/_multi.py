"""Many simulated agents in one process: ``python -m simulation.multi --spec FILE``.

For simulating a fleet of hundreds or thousands of boards on one machine: a
process per agent costs an interpreter each (about 50 MB and a second of CPU to
start), so ``genfl-server simulate --agents-per-process K`` runs K agents in each
of these processes instead. Every agent is the same :class:`AgentCore` as in
``genfl-edge run``, with its own MQTT connection (client id, persistent session,
last will), state folder and data shard; they train through the shared training
pool. One loop serves them in turn, so every agent handles its messages within
a fraction of a second whatever the others do.

The spec is JSON: ``{"agents": [{AgentConfig fields}, ...]}`` (paths as strings).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from edge_agent._daemon import AgentConfig, _Agent, load_agent_config
from protocol import ConfigError, GenflError, Notifier

__all__ = ["run_agents"]

log = logging.getLogger("genfl.edge")


def _connect(agent: _Agent, stop: threading.Event, attempts: int = 30) -> bool:
    def waiting(why: str, seconds: float, refused: bool) -> None:
        log.warning("%s: %s; retrying in %.0f s", agent.config.device_id, why, seconds)

    return agent.transport.connect_patiently(stop, timeout_s=30, attempts=attempts, waiting=waiting)


def run_agents(configs: list[AgentConfig], stop: threading.Event | None = None) -> int:
    """Run every agent until SIGTERM/SIGINT (or ``stop``); each answers its own messages in turn."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    agents = [_Agent(config, Notifier({}), describe_in_process=True) for config in configs]
    started = [agent for agent in agents if _connect(agent, stop)]
    for agent in started:
        agent.core.start()
    last_status = 0.0
    try:
        while not stop.is_set():
            handled = 0
            for agent in started:
                handled += agent.transport.poll(0.0)
                agent.upkeep()
            if time.monotonic() - last_status >= 30.0:
                for agent in started:
                    agent.write_status()
                last_status = time.monotonic()
            if not handled:
                stop.wait(0.01)
    finally:
        for agent in started:
            agent.worker.stop(grace_s=0.0)
            agent.core.publish_state("offline")
            agent.write_status(stopped=True)
            agent.transport.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.multi")
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        spec = json.loads(args.spec.read_text())
        configs = [load_agent_config(None, dict(entry)) for entry in spec["agents"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {args.spec}: not an agents spec ({exc})", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        return run_agents(configs)
    except GenflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
