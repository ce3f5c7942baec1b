"""Benchmark: what secure aggregation's arithmetic and frames cost a device and the server, per round.

One round of the protocol (``protocol.secagg``) for ``cnn-digits`` (and ``cnn-small``) updates: every device
and the server in this process, every message through its real frame (``encode_message``), with 0% and 30% of
the devices dropping before their masked input. Records the seconds each device spends (keys, shares, masking,
unmasking), the server's seconds (relaying, summing, unmasking), the bytes each device sends and receives, and
the same update's plain frame (fp32 and int8) for comparison; checks that the unmasked sum is exact.

Part 2 (``--part mqtt``) runs the rounds for real: ``genfl-server simulate --transport mqtt`` with 10 and 100
agents (digits, shards of two classes, 5 rounds, agents in processes of 10 for 100), each with and without
``--secure-aggregation``, one after the other on the machine's Mosquitto: seconds per round, bytes each device
sends and receives per round, and whether the two give the same model (they must: the sum is exact).

Part 3 (``--part utility``) is accuracy against epsilon: digits, 100 devices (Dirichlet 0.5), 20 rounds with every
device picked, two local epochs, in memory, for seeds 0-3: no DP, then DP-FedAvg clipped at 1.0 with the noise
multiplier that spends epsilon 8, 4 and 1 at delta 1e-5 over the 20 rounds (found by bisection on the same
accountant the server uses); for the CNN (``cnn-digits``, 24k parameters with BatchNorm) and the DP model
(``mlp-digits``, 2.4k parameters, none).

Part 4 (``--part dropout``) is part 2's secure run again, whole and then with 30% of the agents going silent
right after round 2's masked input (their processes frozen, see ``tools/_dropout_round.py``): seconds per round,
the devices in each round's sum, bytes per device.

Writes ``OUT/privacy-arithmetic.json`` (part 1), ``OUT/privacy.json`` (part 2), ``OUT/privacy-utility.json``
(part 3), ``OUT/privacy-dropout.json`` (part 4).

    python tools/bench_privacy.py --out bench                # part 1: about a minute on 2 cores
    python tools/bench_privacy.py --part mqtt --out bench    # part 2: about two minutes on 2 cores
    python tools/bench_privacy.py --part utility --out bench # part 3: about 16 minutes on 2 cores
    python tools/bench_privacy.py --part dropout --out bench # part 4: about three minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models
from cloud_server.learning._aggregation import WeightedDeltaSum
from protocol import (
    MaskedUpdate,
    SecAggForward,
    SecAggKeys,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
    UnmaskRequest,
    Update,
    encode_delta,
    encode_message,
)
from protocol.secagg import SecAggAggregator, SecAggDevice, SecAggParams, summed_update, update_words, vector_length
from tools._bench_common import machine, noise_for, write_json

SHA = "0" * 64


def one_round(model: str, devices: int, drop: float, seed: int = 0) -> dict[str, Any]:
    template = models.model_state(models.build_model(model, seed=0))
    rng = np.random.default_rng(seed)
    names = [f"d{i:04d}" for i in range(devices)]
    deltas = {n: {k: (rng.normal(size=v.shape) * 1e-2).astype(v.dtype) if np.issubdtype(v.dtype, np.floating)
                  else np.zeros_like(v) for k, v in template.items()} for n in names}  # fmt: skip
    weights = {n: int(rng.integers(20, 200)) for n in names}
    length = vector_length(template)
    params = SecAggParams.for_round("bench/round-1", names, length)
    gone = set(rng.choice(names, size=round(drop * devices), replace=False).tolist())
    device_s = dict.fromkeys(names, 0.0)
    sent = dict.fromkeys(names, 0)
    received = dict.fromkeys(names, 0)
    server_s = 0.0

    def timed_device(name: str, action):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        result = action()
        device_s[name] += time.perf_counter() - started
        return result

    parties = {n: SecAggDevice(n, params.context) for n in names}
    server = SecAggAggregator(params)
    for n in names:
        frame = encode_message(SecAggKeys(1, n, *timed_device(n, parties[n].advertise)))
        sent[n] += len(frame)
        started = time.perf_counter()
        keys = _decode(frame, SecAggKeys)  # the server takes what the frame carries
        server.add_keys(n, keys.cipher_key, keys.mask_key)
        server_s += time.perf_counter() - started
    for n in names:
        roster = SecAggRoster(1, n, params.participants, params.degree, params.threshold, length, server.roster(n))
        received[n] += len(encode_message(roster))
        sealed = timed_device(n, lambda n=n, roster=roster: parties[n].share(params, roster.keys))
        frame = encode_message(SecAggShares(1, n, sealed))
        sent[n] += len(frame)
        started = time.perf_counter()
        server.add_shares(n, _decode(frame, SecAggShares).sealed)
        server_s += time.perf_counter() - started
    for n in names:
        forward = SecAggForward(1, n, server.forwarded(n))
        received[n] += len(encode_message(forward))
        timed_device(n, lambda n=n, forward=forward: parties[n].receive(forward.sealed))
    for n in names:
        if n in gone:
            continue
        words = update_words(deltas[n], weights[n], template, 0.5, 0.5, None)
        masked = timed_device(n, lambda n=n, words=words: parties[n].masked_input(words))
        frame = encode_message(MaskedUpdate(1, n, SHA, masked.astype("<u8").tobytes()))
        sent[n] += len(frame)
        started = time.perf_counter()
        server.add_masked(n, np.frombuffer(_decode(frame, MaskedUpdate).words, dtype="<u8").astype(np.uint64))
        server_s += time.perf_counter() - started
    started = time.perf_counter()
    survivors, dropped = server.unmask_request()
    server_s += time.perf_counter() - started
    for n in survivors:
        request = UnmaskRequest(1, n, tuple(survivors), tuple(dropped))
        received[n] += len(encode_message(request))
        answer = timed_device(n, lambda n=n: parties[n].unmask(survivors, dropped))
        frame = encode_message(SecAggUnmask(1, n, answer))
        sent[n] += len(frame)
        started = time.perf_counter()
        server.add_unmask(n, _decode(frame, SecAggUnmask).shares)
        server_s += time.perf_counter() - started
    started = time.perf_counter()
    total = server.result()
    server_s += time.perf_counter() - started
    plain = WeightedDeltaSum(template)
    for n in survivors:
        plain.add(deltas[n], weights[n])
    summed = summed_update(total, template)
    sums, weight = summed.sums, summed.total_weight
    exact = weight == plain.total_weight and all(np.array_equal(sums[k], plain.state()[0][k]) for k in template)
    fp32 = len(encode_message(Update(1, names[0], SHA, 10, 0.1, 0.5, deltas[names[0]])))
    int8 = len(encode_message(Update(1, names[0], SHA, 10, 0.1, 0.5, encode_delta(deltas[names[0]], "int8"),
                                     codec="int8")))  # fmt: skip
    alive = [n for n in names if n not in gone]
    return {
        "model": model, "devices": devices, "dropped_before_input": len(gone), "degree": params.degree,
        "threshold": params.threshold, "parameters": length - 1, "exact_sum": bool(exact),
        "device_seconds_mean": round(statistics.mean(device_s[n] for n in alive), 4),
        "device_seconds_max": round(max(device_s[n] for n in alive), 4),
        "server_seconds": round(server_s, 3),
        "device_bytes_sent_mean": round(statistics.mean(sent[n] for n in alive)),
        "device_bytes_received_mean": round(statistics.mean(received[n] for n in alive)),
        "plain_update_bytes_fp32": fp32, "plain_update_bytes_int8": int8,
    }  # fmt: skip


def _decode(frame: bytes, kind):  # type: ignore[no-untyped-def]
    from protocol import decode_message

    return decode_message(frame, kind)


def mqtt_rounds(work: Path, fleets: list[int]) -> dict[str, Any]:
    """Part 2: the same fleet without and with secure aggregation, side by side, over the machine's Mosquitto."""
    from tools.bench_sim import BROKER, simulate

    report: dict[str, Any] = {"machine": machine(), "fleets": {}}
    for size in fleets:
        job = ["--dataset", "digits", "--devices", str(size), "--partition", "shards", "--classes-per-device", "2",
               "--min-samples", "1", "--rounds", "5", "--local-epochs", "1", "--seed", "0", "--transport", "mqtt",
               "--broker", BROKER, "--agents-per-process", "1" if size <= 10 else "10",
               "--round-timeout", "900"]  # fmt: skip
        row: dict[str, Any] = {}
        for name, extra in (("plain", []), ("secure", ["--secure-aggregation"])):
            run = simulate(work / f"{size}-{name}", *job, *extra)
            metrics = json.loads((work / f"{size}-{name}" / "metrics.json").read_text())
            run["device_bytes_up_per_round"] = round(statistics.mean(r["bytes_up"] / size for r in metrics["rounds"]))
            run["device_bytes_down_per_round"] = round(
                statistics.mean(r["bytes_down"] / size for r in metrics["rounds"])
            )
            row[name] = run
            print(size, name, {k: v for k, v in run.items() if k != "model_sha256"}, flush=True)
        plain, secure = row["plain"], row["secure"]
        row["seconds_per_round_ratio"] = round(
            statistics.mean(secure["seconds_per_round"]) / statistics.mean(plain["seconds_per_round"]), 3
        )
        row["same_model"] = plain["model_sha256"] == secure["model_sha256"]
        report["fleets"][str(size)] = row
    return report


def dropout_rounds(work: Path, fleets: list[int]) -> dict[str, Any]:
    """Part 4: secure rounds over MQTT without and with 30% of the agents silent after their masked input."""
    from tools._dropout_round import DROP_ROUND, dropout_run
    from tools.bench_sim import BROKER, simulate

    report: dict[str, Any] = {"machine": machine(), "drop_round": DROP_ROUND, "fleets": {}}
    for size in fleets:
        job = ["--dataset", "digits", "--devices", str(size), "--partition", "shards", "--classes-per-device", "2",
               "--min-samples", "1", "--rounds", "3", "--local-epochs", "1", "--seed", "0", "--transport", "mqtt",
               "--broker", BROKER, "--agents-per-process", "1" if size <= 10 else "10",
               "--round-timeout", "900", "--secure-aggregation"]  # fmt: skip
        whole = simulate(work / f"{size}-whole", *job)
        row = {"whole": {k: whole[k] for k in ("wall_s", "seconds_per_round", "accepted")},
               "dropout": dropout_run(work / f"{size}-dropout", job, size)}  # fmt: skip
        print(size, row, flush=True)
        report["fleets"][str(size)] = row
    return report


def utility(seeds: list[int], model_names: list[str]) -> dict[str, Any]:
    """Part 3: final accuracy against epsilon, in memory, for each model."""
    rounds, clip = 20, 1.0
    report: dict[str, Any] = {"machine": machine(), "devices": 100, "rounds": rounds, "clip": clip, "models": {}}
    for model in model_names:
        report["models"][model] = _utility_of(model, seeds, rounds, clip)
    return report


def _utility_of(model: str, seeds: list[int], rounds: int, clip: float) -> dict[str, Any]:
    from dataclasses import replace

    from simulation import SimulationConfig, run_simulation

    base = SimulationConfig(dataset="digits", devices=100, alpha=0.5, rounds=rounds, min_samples=2, local_epochs=2,
                            model=model)  # fmt: skip
    settings: dict[str, Any] = {}
    for epsilon in (None, 8.0, 4.0, 1.0):
        z = None if epsilon is None else noise_for(epsilon, 1.0, rounds, 1e-5)
        runs = []
        for seed in seeds:
            config = replace(base, seed=seed) if z is None else replace(base, seed=seed, dp_clip=clip, dp_noise=z)
            result = run_simulation(config)
            runs.append({"seed": seed, "accuracy": [r.accuracy for r in result.rounds],
                         "epsilon": result.rounds[-1].metrics.get("dp_epsilon")})  # fmt: skip
            print(model, epsilon, seed, runs[-1]["accuracy"][-1], runs[-1]["epsilon"], flush=True)
        finals = [run["accuracy"][-1] for run in runs]
        settings["none" if epsilon is None else f"epsilon {epsilon:g}"] = {
            "noise_multiplier": z, "final_mean": statistics.mean(finals), "final_std": statistics.stdev(finals),
            "runs": runs,
        }  # fmt: skip
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--part", choices=("arithmetic", "mqtt", "utility", "dropout"), default="arithmetic")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--fleets", nargs="*", type=int, default=[10, 100])
    parser.add_argument("--models", nargs="*", default=["cnn-digits", "mlp-digits"], help="--part utility's models")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-privacy"))
    args = parser.parse_args()
    if args.part == "mqtt":
        write_json(args.out / "privacy.json", mqtt_rounds(args.work, args.fleets))
        return
    if args.part == "dropout":
        write_json(args.out / "privacy-dropout.json", dropout_rounds(args.work, args.fleets))
        return
    if args.part == "utility":
        write_json(args.out / "privacy-utility.json", utility(args.seeds, args.models))
        return
    runs = []
    for model in ("cnn-digits", "cnn-small"):
        for devices in (10, 100):
            for drop in (0.0, 0.3):
                run = one_round(model, devices, drop)
                print(run, flush=True)
                runs.append(run)
    write_json(args.out / "privacy-arithmetic.json", {"machine": machine(), "runs": runs})


if __name__ == "__main__":
    main()
