"""Split one labelled data set into simulated institutions with flwr-datasets partitioners.

Partitioners run on an in-memory ``datasets.Dataset`` (no hub access). The scheme string is
what ``fedlora sim --partition`` accepts: ``iid``, ``dirichlet:ALPHA``, ``pathological:K``
(K classes per node) or ``natural:COLUMN`` (one node per distinct value of a column, e.g.
the generated data's ``institution``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "pathological", "natural")


@dataclass(frozen=True)
class PartitionScheme:
    """A parsed ``--partition`` value."""

    kind: str
    alpha: float = 0.0
    classes_per_node: int = 0
    column: str = ""

    @classmethod
    def parse(cls, text: str) -> PartitionScheme:
        """Parse ``iid``, ``dirichlet:ALPHA``, ``pathological:K`` or ``natural:COLUMN``."""
        kind, _, arg = text.partition(":")
        if kind not in SCHEMES:
            raise ValueError(
                f"--partition {text!r}: expected iid, dirichlet:ALPHA, pathological:K or "
                "natural:COLUMN"
            )
        try:
            if kind == "dirichlet":
                alpha = float(arg)
                if not alpha > 0:
                    raise ValueError
                return cls(kind, alpha=alpha)
            if kind == "pathological":
                k = int(arg)
                if k < 1:
                    raise ValueError
                return cls(kind, classes_per_node=k)
        except ValueError:
            raise ValueError(
                f"--partition {text!r}: {kind} needs a positive number after ':'"
            ) from None
        if kind == "natural":
            if not arg:
                raise ValueError(
                    f"--partition {text!r}: natural needs a column, e.g. natural:institution"
                )
            return cls(kind, column=arg)
        if arg:
            raise ValueError(f"--partition {text!r}: iid takes no argument")
        return cls(kind)


@dataclass(frozen=True)
class Partition:
    """One simulated institution: its name and the record indices it holds."""

    name: str
    indices: np.ndarray


def partition_records(
    label_ids: Sequence[int],
    scheme: PartitionScheme,
    num_nodes: int | None,
    seed: int,
    natural_values: Sequence[str] | None = None,
    min_size: int = 1,
) -> list[Partition]:
    """Assign record indices to nodes.

    Parameters
    ----------
    label_ids
        Class index of every record.
    scheme
        How to split.
    num_nodes
        Number of nodes; with ``natural`` it must be ``None`` or equal the number of distinct
        values.
    seed
        Seed of the partitioner.
    natural_values
        The column's values per record (``natural`` only).
    min_size
        Dirichlet re-draws until every node holds at least this many records.

    Returns
    -------
    list of Partition
        Non-empty partitions, named ``node-00``, ... or by the natural column's values.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        NaturalIdPartitioner,
        PathologicalPartitioner,
    )

    columns: dict[str, list[object]] = {
        "idx": list(range(len(label_ids))),
        "label": [int(x) for x in label_ids],
    }
    if scheme.kind == "natural":
        if natural_values is None:
            raise ValueError(f"the data has no column {scheme.column!r} to partition by")
        columns["natural"] = [str(v) for v in natural_values]
    dataset = Dataset.from_dict(columns)
    if scheme.kind == "natural":
        partitioner = NaturalIdPartitioner(partition_by="natural")
        partitioner.dataset = dataset
        found = partitioner.num_partitions
        if num_nodes is not None and num_nodes != found:
            raise ValueError(
                f"--nodes {num_nodes} disagrees with natural:{scheme.column}, which has "
                f"{found} distinct values; omit --nodes"
            )
        mapping = partitioner.partition_id_to_natural_id
        return [
            Partition(str(mapping[i]), np.asarray(partitioner.load_partition(i)["idx"]))
            for i in range(found)
        ]
    if num_nodes is None or num_nodes < 1:
        raise ValueError(f"--partition {scheme.kind} needs --nodes >= 1")
    if num_nodes > len(label_ids):
        raise ValueError(f"{num_nodes} nodes but only {len(label_ids)} records")
    if scheme.kind == "iid":
        partitioner = IidPartitioner(num_partitions=num_nodes)
    elif scheme.kind == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_nodes,
            partition_by="label",
            alpha=scheme.alpha,
            min_partition_size=min_size,
            self_balancing=True,
            seed=seed,
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=num_nodes,
            partition_by="label",
            num_classes_per_partition=scheme.classes_per_node,
            seed=seed,
        )
    partitioner.dataset = dataset
    width = len(str(num_nodes - 1))
    try:
        parts = [
            Partition(f"node-{i:0{width}d}", np.asarray(partitioner.load_partition(i)["idx"]))
            for i in range(num_nodes)
        ]
    except ValueError as error:
        if scheme.kind != "dirichlet":
            raise
        # flwr-datasets gives up after 10 draws and only asks to "update the values of alpha".
        raise ValueError(
            f"partition dirichlet:{scheme.alpha:g} could not give each of {num_nodes} nodes at "
            f"least {min_size} records (one batch) from {len(label_ids)} records in "
            f"{len(set(label_ids))} classes, in flwr-datasets' 10 draws; lower --batch-size, "
            "use fewer nodes or a larger alpha"
        ) from error
    empty = [p.name for p in parts if len(p.indices) == 0]
    if empty:
        raise ValueError(
            f"partition {scheme.kind} left {len(empty)} node(s) without data "
            f"({', '.join(empty[:5])}); "
            "use fewer nodes or a milder split"
        )
    return parts
