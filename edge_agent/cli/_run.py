"""``genfl-edge run``: the agent daemon (what the systemd unit starts)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edge_agent._daemon import load_agent_config, run_agent
from edge_agent._enroll import find_config
from protocol import exit_on_error


def run(
    config: Annotated[Optional[Path], typer.Option(help="TOML settings; the flags below override it.")] = None,
    device_id: Annotated[Optional[str], typer.Option(help="This device's id.")] = None,
    data: Annotated[Optional[str], typer.Option(help="digits, cifar10, folder:PATH, zip:PATH or npz:PATH.")] = None,
    state_dir: Annotated[Optional[Path], typer.Option(help="Models, the pending update, status.json.")] = None,
    fleet: Annotated[Optional[str], typer.Option(help="Fleet name (topic prefix genfl/<fleet>/).")] = None,
    broker: Annotated[
        Optional[str], typer.Option(help="Broker URL, mqtt://HOST:PORT; a cluster: its nodes, comma-separated.")
    ] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where cifar10 is (or is downloaded to).")] = None,
    worker: Annotated[
        Optional[str], typer.Option(help="per-task (frees memory), persistent, or pool (a shared training pool).")
    ] = None,
    pool_socket: Annotated[
        Optional[Path], typer.Option(help="With --worker pool: the socket of `python -m simulation.pool`.")
    ] = None,
    torch_device: Annotated[Optional[str], typer.Option(help="Where the worker trains: cpu or cuda.")] = None,
    share_label_counts: Annotated[
        Optional[bool], typer.Option("--share-label-counts/--no-share-label-counts", help="Send the label histogram.")
    ] = None,
    label_noise: Annotated[
        Optional[float],
        typer.Option(
            metavar="EPSILON", help="Share the label counts with Laplace noise (epsilon-DP); implies sharing."
        ),
    ] = None,
    backoff_cap: Annotated[Optional[float], typer.Option(help="Longest wait between reconnects, seconds.")] = None,
    stop_grace: Annotated[Optional[float], typer.Option(help="Seconds a running training may finish on stop.")] = None,
    train_window: Annotated[
        Optional[str], typer.Option(help="Train only in this local window, e.g. 22:00-06:00.")
    ] = None,
    min_free_memory: Annotated[Optional[float], typer.Option(help="MB that must be free to start a worker.")] = None,
    resend_after: Annotated[Optional[float], typer.Option(help="Re-send an unacknowledged update after N s.")] = None,
    state_refresh: Annotated[
        Optional[float], typer.Option(help="Say 'online' again every N s while connected (0: only on connect).")
    ] = None,
    status_interval: Annotated[Optional[float], typer.Option(help="Seconds between status.json rewrites.")] = None,
    min_batch_size: Annotated[Optional[int], typer.Option(help="Refuse tasks with smaller batches.")] = None,
    min_local_steps: Annotated[
        Optional[int], typer.Option(help="Refuse tasks with fewer optimizer steps over the local data.")
    ] = None,
    allowed_codecs: Annotated[
        Optional[str], typer.Option(help="Comma-separated update codecs this device accepts, e.g. int8,int4.")
    ] = None,
    require_qat: Annotated[
        Optional[bool], typer.Option("--require-qat/--allow-float", help="Refuse tasks that train in float.")
    ] = None,
    sample_count_noise: Annotated[
        Optional[float], typer.Option(metavar="EPSILON", help="Report the sample count with Laplace noise.")
    ] = None,
    classes: Annotated[
        Optional[str],
        typer.Option(help="The fleet's class names, comma-separated (enroll writes them; every task names them)."),
    ] = None,
    home: Annotated[
        Optional[Path], typer.Option(help="Use the config `enroll` wrote under this folder (or $GENFL_EDGE_HOME).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the agent: keep the broker session, train each round in a worker process, send updates."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with exit_on_error():
        if config is None and device_id is None:  # no flags that make a config: the one `enroll` wrote
            config = find_config(home)
        settings = load_agent_config(
            config,
            {
                "device_id": device_id,
                "data": data,
                "state_dir": state_dir,
                "fleet": fleet,
                "broker": broker,
                "data_dir": data_dir,
                "worker": worker,
                "pool_socket": pool_socket,
                "torch_device": torch_device,
                "share_label_counts": share_label_counts,
                "label_noise": label_noise,
                "backoff_cap": backoff_cap,
                "stop_grace": stop_grace,
                "train_window": train_window,
                "min_free_memory": min_free_memory,
                "status_interval": status_interval,
                "resend_after": resend_after,
                "state_refresh": state_refresh,
                "min_batch_size": min_batch_size,
                "min_local_steps": min_local_steps,
                "allowed_codecs": allowed_codecs,
                "require_qat": require_qat,
                "sample_count_noise": sample_count_noise,
                "classes": classes,
            },
        )
        code = run_agent(settings)
    raise typer.Exit(code=code)
