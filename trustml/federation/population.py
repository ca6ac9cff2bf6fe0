"""The simulated client population: which training rows each client holds in each time period."""

from __future__ import annotations

from typing import Any

import numpy as np

from trustml.data.base import TrustDataModule
from trustml.errors import ConfigError
from trustml.federation.continual import arrival_order, client_windows
from trustml.federation.options import PartitionConfig
from trustml.federation.partition import (
    LabelCounts,
    Partition,
    Segments,
    client_arrays,
    label_counts_of,
    make_partition,
    partition_statistics,
    size_skew,
)


class ClientPopulation:
    """Clients built from the training split by the configured partitioner and arrival schedule.

    ``windows(t)`` gives the rows each client holds in period ``t`` (all of them in the static setting);
    ``sizes(t)`` their counts, which is all the server learns about a client's data.

    Everything is held as flat arrays (:class:`~trustml.federation.partition.Segments`): a client's rows are a
    slice made when it is selected, so set-up and memory grow by a few int64 per client, not a Python object each.
    """

    def __init__(
        self,
        partition: Partition,
        arrivals: Partition,
        names: list[str] | None,
        options: PartitionConfig,
        labels: np.ndarray,
        num_classes: int,
    ) -> None:
        self.partition, self.arrivals, self.names = Segments.of(partition), Segments.of(arrivals), names
        self.num_periods = options.num_periods if options.setting == "continual" else 1
        self.storage_cap = options.storage_cap if options.setting == "continual" else None
        self.growth = options.arrival_growth if options.setting == "continual" else 1.0
        self.labels, self.num_classes = labels, num_classes
        self._cached: tuple[int, Segments, np.ndarray] | None = None
        self._label_counts: LabelCounts | None = None

    @classmethod
    def from_datamodule(cls, datamodule: TrustDataModule, options: PartitionConfig) -> ClientPopulation:
        """Partition ``datamodule``'s training split as the ``federation.partition`` section says (seeded by its
        ``seed``).

        ``num_clients`` above the number of training samples is refused (:class:`ConfigError`): that many clients
        cannot all hold data. Empty clients that skew leaves are allowed (see :attr:`empty_clients`).
        """
        train = datamodule.splits["train"]
        labels, num_classes = train.labels.numpy(), datamodule.num_classes
        if labels.ndim != 1:  # a label per token (tagging): no class per sample to skew or count
            if options.kind == "dirichlet_label":
                raise ConfigError(
                    "federation.partition.kind=dirichlet_label skews each client's classes, but this data has a label "
                    "per token, not a class per sample; use kind=iid, dirichlet_quantity, heavy_tailed or natural "
                    "(e.g. group_column=intent)"
                )
            labels, num_classes = np.zeros(len(labels), dtype=np.int64), 1
        if options.kind not in ("natural", "heavy_tailed_natural") and options.num_clients > len(labels):
            raise ConfigError(
                f"federation.partition.num_clients={options.num_clients} exceeds the {len(labels)} training samples, "
                f"so at least {options.num_clients - len(labels)} clients would hold no data; lower "
                f"federation.partition.num_clients to at most {len(labels)}"
            )
        rng = np.random.default_rng(options.seed)
        partition, names = make_partition(
            options.kind,
            labels,
            train.groups,
            num_clients=options.num_clients,
            dirichlet_alpha=options.dirichlet_alpha,
            quantity_beta=options.quantity_beta,
            group_column=options.group_column,
            rng=rng,
            heavy_tail=options.heavy_tail,
            skew=options.skew,
        )
        arrivals = arrival_order(partition, options.arrival_order, rng)
        return cls(partition, arrivals, names, options, labels, num_classes)

    def __len__(self) -> int:
        return len(self.partition)

    @property
    def empty_clients(self) -> int:
        """Number of clients that hold no training sample in any period (never selected)."""
        return int((self.partition.sizes == 0).sum())

    def _period(self, period: int) -> tuple[int, Segments, np.ndarray]:
        """``(period, windows, sizes)`` of ``period``, computed once per period change (rounds ask every round);
        ``sizes`` is read-only, so the same array can be handed out every round."""
        if self._cached is None or self._cached[0] != period:
            windows = client_windows(self.arrivals, period, self.num_periods, self.storage_cap, self.growth)
            sizes = windows.sizes
            sizes.flags.writeable = False
            self._cached = (period, windows, sizes)
        return self._cached

    def windows(self, period: int) -> Partition:
        """Rows held by every client in ``period``."""
        return self._period(period)[1]

    def sizes(self, period: int) -> np.ndarray:
        """Number of samples every client holds in ``period`` (read-only: the same array every call of a period,
        so the server's selection can reuse what it derived from it; copy it to change it)."""
        return self._period(period)[2]

    def statistics(self, *, list_clients: bool | None = None) -> dict[str, Any]:
        """Partition statistics (summaries; every client listed only for small populations, see
        :func:`~trustml.federation.partition.partition_statistics`) plus the arrival schedule."""
        stats = partition_statistics(
            self.labels,
            self.partition,
            self.num_classes,
            self.names,
            list_clients=list_clients,
            counts=self.label_counts(),
        )
        stats["num_periods"] = self.num_periods
        stats["storage_cap"] = self.storage_cap
        stats["held_samples_per_period"] = [int(self.sizes(t).sum()) for t in range(self.num_periods)]
        stats["arrival_growth"] = self.growth
        # how unequal the devices are in each period (what the server's activity-based selection sees)
        stats["size_skew_per_period"] = [size_skew(self.sizes(t)) for t in range(self.num_periods)]
        return stats

    def label_counts(self) -> LabelCounts:
        """Every client's label counts (sparse), computed once."""
        if self._label_counts is None:
            self._label_counts = label_counts_of(self.labels, self.partition, self.num_classes)
        return self._label_counts

    def client_arrays(self) -> dict[str, np.ndarray]:
        """Per-client arrays (samples, label counts, label entropy, the partition's rows/starts/ends, and the
        natural partition's client names when there are some), for ``partition.npz``."""
        arrays = client_arrays(self.labels, self.partition, self.num_classes, self.label_counts())
        if self.names is not None:
            arrays["names"] = np.asarray(self.names, dtype=str)
        return arrays
