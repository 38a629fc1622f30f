"""Simulated nodes' data on disk: one file per node plus an index.

``fedlora sim`` writes each institution's share of the data to its own CSV, the way a real
node has its own file; a simulated node finds its file from its Flower ``partition-id``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from privacy.durable_io import write_json_atomic, write_text_atomic

INDEX_FILE = "index.json"


def write_partition_files(
    directory: Path,
    names: Sequence[str],
    rows_per_node: Sequence[Sequence[tuple[str, str]]],
    text_column: str,
    label_column: str,
    node_configs: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Path]:
    """Write ``<name>.csv`` (text, label) per node and ``index.json`` mapping ids to files.

    ``node_configs`` holds what a real node would have in its own node config (e.g. its
    ``budget-epsilon``): it belongs to the node, not to the server's run config.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in zip(names, rows_per_node, strict=True):
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([text_column, label_column])
        writer.writerows(rows)
        path = directory / f"{name}.csv"
        write_text_atomic(path, buffer.getvalue())
        paths.append(path)
    configs = node_configs or {}
    write_json_atomic(
        directory / INDEX_FILE,
        [
            {"partition_id": i, "node": n, "file": p.name, "node_config": dict(configs.get(n, {}))}
            for i, (n, p) in enumerate(zip(names, paths, strict=True))
        ],
    )
    return paths


@dataclass(frozen=True)
class SimulatedNode:
    """A simulated node's name, data file and own node config."""

    name: str
    data_path: Path
    node_config: Mapping[str, float]


def partition_file(directory: Path, partition_id: int) -> SimulatedNode:
    """The simulated node with this Flower ``partition-id``.

    Raises
    ------
    ValueError
        If the index is missing or has no such partition.
    """
    index_path = directory / INDEX_FILE
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{index_path}: cannot read the partition index: {exc}") from exc
    for entry in index:
        if entry["partition_id"] == partition_id:
            return SimulatedNode(
                str(entry["node"]), directory / str(entry["file"]), entry.get("node_config", {})
            )
    raise ValueError(f"{index_path}: no partition {partition_id}")
