"""Flower runtime: a ClientApp and a ServerApp built from the same objects as the in-process simulation.

The ClientApp answers two message types: ``query`` (which client am I, how many samples do I hold per
period) and ``train`` (load the global weights and the client's callback state, run
:class:`~trustml.federation.client.ClientTrainer` on the client's current window, reply with the update, the
metrics and the new callback state). Client ``k`` is the SuperNode whose ``node_config["partition-id"]`` is
``k``. The ServerApp drives :class:`~trustml.federation.rounds.RoundLoop` with a :class:`GridTransport`, which
sends one ``train`` message per selected client through the Grid and collects the replies within
``federation.client.timeout_s``: error replies count as failed clients, missing ones as timed out.

Per-client state: a client's ``federated_scope="client"`` callbacks (e.g. its DP-SGD privacy
accountant) keep state between the rounds it takes part in. The transport holds each client's last state
(as JSON), sends it with the client's next ``train`` message and takes the new one from its reply, and the
round loop saves it in the per-round checkpoint in the same form as the in-process simulation
(:class:`~trustml.federation.simulation.InProcessClients`). So a client's privacy loss composes over every
round it trains in, also across a resumed run (a run can even resume under the other runtime). The server
only stores and returns this state; it never enters aggregation. A state must be JSON (numbers, strings,
lists, dicts): Flower records carry no Python objects, and the server never unpickles what a client sends.

:func:`run_flower_simulation` runs both on Flower's simulation engine (Ray), in this process; the same
apps run on a SuperLink with SuperNodes for a real deployment.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trustml.errors import ConfigError
from trustml.federation.client import ClientTrainer, ClientUpdate
from trustml.federation.population import ClientPopulation
from trustml.federation.rounds import ClientFailure, ClientStates, RoundLoop

log = logging.getLogger(__name__)

# Flower reports usage to its servers unless told not to; runs must stay offline.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

PARTITION_KEY = "partition-id"
#: record (in ``train`` messages and their replies) that carries a client's callback states
STATE_RECORD = "client_state"

CallbackStates = list[dict[str, Any]]


def _json_scalar(value: Any) -> Any:
    """A NumPy/torch scalar as the Python number JSON can write; anything else is refused."""
    if isinstance(value, np.generic) or (isinstance(value, Tensor) and value.dim() == 0):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode_states(states: CallbackStates) -> str:
    """``states`` (the ``state_dict()`` of each client callback) as JSON text for a Flower record.

    Raises :class:`~trustml.errors.ConfigError` naming the fix when a state holds something JSON cannot write.
    """
    try:
        return json.dumps(states, default=_json_scalar, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"federation.runtime.engine=flower carries each client's callback state (federated_scope='client') "
            f"between rounds as JSON, but a state_dict() holds something JSON cannot write ({exc}); make that "
            f"callback's state_dict() numbers, strings, lists and dicts, or use federation.runtime.engine=simulation"
        ) from exc


def decode_states(text: str) -> CallbackStates:
    """The callback states that :func:`encode_states` wrote."""
    states = json.loads(text)
    if not isinstance(states, list) or not all(isinstance(state, dict) for state in states):
        raise ValueError(f"a client's callback state must be a JSON list of objects, got {text[:80]!r}")
    return states


def state_record(states: CallbackStates) -> Any:
    """A Flower ``ConfigRecord`` holding ``states``."""
    from flwr.app import ConfigRecord

    return ConfigRecord({"callback_states": encode_states(states)})


def states_of(content: Any) -> CallbackStates:
    """The callback states in a message's :data:`STATE_RECORD` (none when the record is absent)."""
    if STATE_RECORD not in content:
        return []
    return decode_states(str(content[STATE_RECORD]["callback_states"]))


def describe_reply(msg: Any, client: int, population: ClientPopulation) -> Any:
    """The reply to a ``query`` message: which client this node is and its sample count per period."""
    from flwr.app import ConfigRecord, Message, RecordDict

    sizes = [int(population.sizes(t)[client]) for t in range(population.num_periods)]
    return Message(RecordDict({"client": ConfigRecord({"client": client, "sizes": sizes})}), reply_to=msg)


def train_reply(msg: Any, client: int, trainer: ClientTrainer, population: ClientPopulation) -> Any:
    """The reply to a ``train`` message: ``client``'s update from the sent global weights, its metrics and its
    new callback states (see module doc)."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    config = msg.content["config"]
    weights = torch.from_numpy(msg.content["global"].to_numpy_ndarrays()[0].copy())
    rows = population.windows(int(config["period"]))[client]
    update = trainer.train(client, rows, weights, states_of(msg.content))
    metrics = {"num_examples": update.num_examples, **update.metrics}
    return Message(
        RecordDict(
            {
                "update": ArrayRecord([update.delta.numpy()]),
                "metrics": MetricRecord(metrics),
                STATE_RECORD: state_record(update.callback_states),
            }
        ),
        reply_to=msg,
    )


def client_of(context: Any) -> int:
    """The client a SuperNode serves: its ``node_config["partition-id"]``."""
    return int(context.node_config[PARTITION_KEY])


def build_client_app(trainer: ClientTrainer, population: ClientPopulation) -> Any:
    """The ClientApp of client ``node_config["partition-id"]`` (see module doc)."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def describe(msg: Message, context: Context) -> Message:
        return describe_reply(msg, client_of(context), population)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(msg, client_of(context), trainer, population)

    return app


class GridTransport(ClientStates):
    """A :data:`~trustml.federation.rounds.Transport` over a Flower Grid (one ``train`` message per client).

    ``client_states`` holds each client's callback states (see module doc): sent with its next
    ``train`` message, replaced by the states its successful reply carries, saved and restored with the run
    checkpoint in the in-process simulation's form (:class:`~trustml.federation.rounds.ClientStates`). The updates
    of a round come back in the order the clients were selected, whatever order the replies arrive in, so
    aggregation does not depend on arrival order.
    """

    def __init__(self, grid: Any, node_of_client: dict[int, int], timeout_s: float | None) -> None:
        super().__init__()
        self.grid, self.node_of_client, self.timeout_s = grid, node_of_client, timeout_s
        self.client_of_node = {node: client for client, node in node_of_client.items()}

    def __call__(
        self, round_index: int, period: int, clients: np.ndarray, global_weights: Tensor
    ) -> tuple[list[ClientUpdate], list[ClientFailure]]:
        from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

        global_record = ArrayRecord([global_weights.numpy()])
        config = ConfigRecord({"round": round_index, "period": period})
        messages = [
            Message(
                RecordDict(
                    {
                        "global": global_record,
                        "config": config,
                        STATE_RECORD: state_record(self.client_states.get(d, [])),
                    }
                ),
                dst_node_id=self.node_of_client[d],
                message_type="train",
                group_id=str(round_index),
            )
            for d in clients.tolist()
        ]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout_s))
        # a reply names the message it answers; sending gave each message its id. (Not the replying node: the
        # SuperLink itself answers, as node 1, for a SuperNode that has gone away.)
        client_of_message = {m.metadata.message_id: d for m, d in zip(messages, clients.tolist(), strict=True)}
        by_client: dict[int, ClientUpdate] = {}
        failures: list[ClientFailure] = []
        answered: set[int] = set()
        for reply in replies:
            client = client_of_message.get(reply.metadata.reply_to_message_id)
            if client is None:
                client = self.client_of_node.get(reply.metadata.src_node_id)
            if client is None or client in answered:
                log.warning("federation: ignoring a reply to no message of round %d", round_index)
                continue
            answered.add(client)
            if reply.has_error():
                failures.append(ClientFailure(client, f"client error: {reply.error.reason}"))
                continue
            metrics = dict(reply.content["metrics"])
            delta = torch.from_numpy(reply.content["update"].to_numpy_ndarrays()[0].copy())
            num_examples = int(metrics.pop("num_examples"))
            states = states_of(reply.content)
            self.client_states[client] = states
            by_client[client] = ClientUpdate(
                client, num_examples, delta, {k: float(v) for k, v in metrics.items()}, states
            )
        updates = [by_client[d] for d in clients.tolist() if d in by_client]
        failures += [
            ClientFailure(d, f"no reply within federation.client.timeout_s={self.timeout_s}", timed_out=True)
            for d in clients.tolist()
            if d not in answered
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


def discover_clients(grid: Any, nodes: list[int], timeout_s: float) -> tuple[dict[int, int], np.ndarray]:
    """Ask every node which client it is and its sample count per period: ``(node of client, sizes [M, T])``."""
    from flwr.app import Message, RecordDict

    messages = [Message(RecordDict(), dst_node_id=node, message_type="query") for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout_s))
    errors = [r.error.reason for r in replies if r.has_error()]
    if errors or len(replies) != len(nodes):
        raise RuntimeError(f"{len(nodes) - len(replies)} node(s) did not describe their client; errors: {errors}")
    node_of_client: dict[int, int] = {}
    sizes: dict[int, list[int]] = {}
    for reply in replies:
        record = reply.content["client"]
        client = int(record["client"])
        node_of_client[client] = reply.metadata.src_node_id
        sizes[client] = list(record["sizes"])
    ordered = np.array([sizes[d] for d in sorted(sizes)], dtype=np.int64)
    return node_of_client, ordered


def serve(
    grid: Any,
    make_loop: Callable[[Any, Callable[[int], np.ndarray]], RoundLoop],
    num_clients: int,
    timeout_s: float | None,
    *,
    resume: bool = True,
    source: Path | None = None,
    startup_timeout_s: float = 120.0,
) -> RoundLoop:
    """The ServerApp's work over ``grid``: wait for ``num_clients`` SuperNodes, learn which client each serves,
    then run the round loop over a :class:`GridTransport`; return the loop (its ``history`` holds the rounds).

    ``make_loop(transport, sizes_at)`` builds the same :class:`RoundLoop` the simulation uses; the loop's
    checkpoint carries the :class:`GridTransport`'s per-client callback states. With ``resume`` it continues
    from the run's last checkpoint (else from ``source``, another run's checkpoint, when given), the clients'
    callback states included (:meth:`RoundLoop.resume`).
    """
    nodes = wait_for_nodes(grid, num_clients, startup_timeout_s)
    node_of_client, sizes = discover_clients(grid, nodes, startup_timeout_s)
    transport = GridTransport(grid, node_of_client, timeout_s)
    loop = make_loop(transport, lambda period: sizes[:, period])
    loop.client_state, loop.restore_client_state = transport.state_dict, transport.load_state_dict
    loop.resume(own=resume, source=source)
    loop.run()
    return loop


def build_server_app(
    make_loop: Callable[[Any, Callable[[int], np.ndarray]], RoundLoop],
    num_clients: int,
    timeout_s: float | None,
    *,
    resume: bool = True,
    source: Path | None = None,
    startup_timeout_s: float = 120.0,
) -> Any:
    """The ServerApp: :func:`serve` over the Grid Flower gives it."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(
            grid, make_loop, num_clients, timeout_s, resume=resume, source=source, startup_timeout_s=startup_timeout_s
        )

    return app


def run_flower_simulation(server_app: Any, client_app: Any, num_clients: int, num_cpus: int) -> None:
    """Run the apps on Flower's simulation engine with ``num_clients`` SuperNodes (Ray, ``num_cpus`` CPUs)."""
    from flwr.simulation import run_simulation

    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": num_cpus, "include_dashboard": False, "log_to_driver": True},
    }
    run_simulation(
        server_app=server_app, client_app=client_app, num_supernodes=num_clients, backend_config=backend_config
    )
