"""Flower runtime: a ClientApp and a ServerApp built from the same objects as the in-process simulation.

The ClientApp answers two message types: ``query`` (which device am I, how many samples do I hold per
period) and ``train`` (load the global weights, run :class:`~trustml.federation.client.LocalTrainer` on
the device's current window, reply with the update and metrics). Device ``k`` is the SuperNode whose
``node_config["partition-id"]`` is ``k``; its client-side callback state lives in the node's
``Context.state`` between rounds. The ServerApp drives :class:`~trustml.federation.rounds.RoundLoop`
with a transport that sends one ``train`` message per selected device through the Grid and collects the
replies within ``client_timeout_s``: error replies count as failed clients, missing ones as timed out.

:func:`run_flower_simulation` runs both on Flower's simulation engine (Ray), in this process; the same
apps run on a SuperLink with SuperNodes for a real deployment.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trustml.federation.client import ClientUpdate, LocalTrainer
from trustml.federation.devices import DevicePopulation
from trustml.federation.rounds import ClientFailure, RoundLoop

# Flower reports usage to its servers unless told not to; runs must stay offline.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

PARTITION_KEY = "partition-id"
STATE_KEY = "trustml"


def build_client_app(trainer: LocalTrainer, population: DevicePopulation) -> Any:
    """The ClientApp of device ``node_config["partition-id"]`` (see module doc)."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def device_of(context: Context) -> int:
        return int(context.node_config[PARTITION_KEY])

    @app.query()
    def describe(msg: Message, context: Context) -> Message:
        device = device_of(context)
        sizes = [int(population.sizes(t)[device]) for t in range(population.num_periods)]
        return Message(RecordDict({"device": ConfigRecord({"device": device, "sizes": sizes})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        device = device_of(context)
        config = msg.content["config"]
        weights = torch.from_numpy(msg.content["global"].to_numpy_ndarrays()[0].copy())
        saved = context.state.get(STATE_KEY)
        callback_states = json.loads(str(saved["callback_states"])) if saved is not None else []
        rows = population.windows(int(config["period"]))[device]
        update = trainer.train(device, rows, weights, callback_states)
        context.state[STATE_KEY] = ConfigRecord({"callback_states": json.dumps(update.callback_states)})
        metrics = {"num_examples": update.num_examples, **update.metrics}
        return Message(
            RecordDict({"update": ArrayRecord([update.delta.numpy()]), "metrics": MetricRecord(metrics)}),
            reply_to=msg,
        )

    return app


class GridTransport:
    """A :data:`~trustml.federation.rounds.Transport` over a Flower Grid (one ``train`` message per device)."""

    def __init__(self, grid: Any, node_of_device: dict[int, int], timeout_s: float | None) -> None:
        self.grid, self.node_of_device, self.timeout_s = grid, node_of_device, timeout_s

    def __call__(
        self, round_index: int, period: int, devices: np.ndarray, global_weights: Tensor
    ) -> tuple[list[ClientUpdate], list[ClientFailure]]:
        from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

        device_of_node = {node: device for device, node in self.node_of_device.items()}
        content = RecordDict({
            "global": ArrayRecord([global_weights.numpy()]),
            "config": ConfigRecord({"round": round_index, "period": period}),
        })
        messages = [
            Message(content, dst_node_id=self.node_of_device[d], message_type="train", group_id=str(round_index))
            for d in devices.tolist()
        ]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout_s))
        updates, failures, answered = [], [], set()
        for reply in replies:
            device = device_of_node[reply.metadata.src_node_id]
            answered.add(device)
            if reply.has_error():
                failures.append(ClientFailure(device, f"client error: {reply.error.reason}"))
                continue
            metrics = dict(reply.content["metrics"])
            delta = torch.from_numpy(reply.content["update"].to_numpy_ndarrays()[0].copy())
            num_examples = int(metrics.pop("num_examples"))
            updates.append(ClientUpdate(device, num_examples, delta, {k: float(v) for k, v in metrics.items()}))
        failures += [
            ClientFailure(d, f"no reply within federation.client_timeout_s={self.timeout_s}", timed_out=True)
            for d in devices.tolist() if d not in answered
        ]
        return updates, failures


def wait_for_nodes(grid: Any, count: int, timeout_s: float) -> list[int]:
    """The ids of ``count`` connected SuperNodes; raise ``TimeoutError`` when they do not all connect in time."""
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {count} Flower SuperNodes connected within {timeout_s:.0f}s")
        time.sleep(0.2)
    return nodes


def discover_devices(grid: Any, nodes: list[int], timeout_s: float) -> tuple[dict[int, int], np.ndarray]:
    """Ask every node which device it is and its sample count per period: ``(node of device, sizes [M, T])``."""
    from flwr.app import Message, RecordDict

    messages = [Message(RecordDict(), dst_node_id=node, message_type="query") for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout_s))
    errors = [r.error.reason for r in replies if r.has_error()]
    if errors or len(replies) != len(nodes):
        raise RuntimeError(f"{len(nodes) - len(replies)} node(s) did not describe their device; errors: {errors}")
    node_of_device: dict[int, int] = {}
    sizes: dict[int, list[int]] = {}
    for reply in replies:
        record = reply.content["device"]
        device = int(record["device"])
        node_of_device[device] = reply.metadata.src_node_id
        sizes[device] = list(record["sizes"])
    ordered = np.array([sizes[d] for d in sorted(sizes)], dtype=np.int64)
    return node_of_device, ordered


def build_server_app(make_loop: Callable[[Any, Callable[[int], np.ndarray]], RoundLoop], num_devices: int,
                     timeout_s: float | None, *, resume: bool = True, startup_timeout_s: float = 120.0) -> Any:
    """The ServerApp: connect to the devices, then run the round loop over the Grid.

    ``make_loop(transport, sizes_at)`` builds the same :class:`RoundLoop` the simulation uses; with
    ``resume`` it continues from the run's last checkpoint.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = wait_for_nodes(grid, num_devices, startup_timeout_s)
        node_of_device, sizes = discover_devices(grid, nodes, startup_timeout_s)
        loop = make_loop(GridTransport(grid, node_of_device, timeout_s), lambda period: sizes[:, period])
        if resume:
            loop.resume()
        loop.run()

    return app


def run_flower_simulation(server_app: Any, client_app: Any, num_devices: int, num_cpus: int) -> None:
    """Run the apps on Flower's simulation engine with ``num_devices`` SuperNodes (Ray, ``num_cpus`` CPUs)."""
    from flwr.simulation import run_simulation

    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": num_cpus, "include_dashboard": False, "log_to_driver": True},
    }
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_devices,
                   backend_config=backend_config)
