"""Partition a data set across devices and print the label histogram.

    python tools/partition.py --dataset digits --devices 10 --alpha 0.5 --seed 0 --out parts.json
    python tools/partition.py --scheme shards --classes-per-device 2

The logic is ``edge_agent.partition_labels``; this is only its command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from edge_agent import load_dataset
from protocol import GenflError
from simulation import histogram_table, label_histogram, partition_labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", help="digits, cifar10, folder:PATH or zip:PATH")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--scheme", choices=["dirichlet", "shards"], default="dirichlet")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--classes-per-device", type=int, default=2)
    parser.add_argument("--min-samples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the index lists as JSON")
    args = parser.parse_args()
    try:
        dataset = load_dataset(args.dataset)
        labels = dataset.train.labels
        parts = partition_labels(
            labels,
            args.devices,
            scheme=args.scheme,
            alpha=args.alpha,
            classes_per_device=args.classes_per_device,
            seed=args.seed,
            min_samples=args.min_samples,
        )
    except GenflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    histogram = label_histogram(labels, parts, dataset.num_classes)
    title = f"{dataset.name}: {args.scheme} partition over {args.devices} devices (seed {args.seed})"
    table = histogram_table(dataset.classes, histogram, title)
    Console(width=200).print(table)
    if args.out:
        args.out.write_text(json.dumps({"dataset": dataset.name, "devices": [p.tolist() for p in parts]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
