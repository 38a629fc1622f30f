"""An in-process transport for running Flower's real SecAgg+ protocol in tests.

The protocol code is Flower's own (``SecAggPlusWorkflow`` as wrapped by fedlora on the
server, fedlora's ClientApp mod chain with ``secaggplus_mod`` on the nodes); only the
transport is replaced: :class:`LoopbackGrid` hands each message to the destination node's
``ClientApp`` in this process and returns its reply, recording every reply exactly as the
server receives it. That lets a test look at what the server sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.client import Client, ClientApp, NumPyClient
from flwr.common import ConfigRecord, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp.grid.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 7


class LoopbackGrid(Grid):
    """Delivers every message to ``apps[dst]`` in-process, serialised both ways as over a
    real connection; keeps every reply received."""

    def __init__(self, apps: dict[int, ClientApp], contexts: dict[int, Context]) -> None:
        self.apps = apps
        self.contexts = contexts
        self.received: list[Message] = []
        self._run = Run.create_empty(RUN_ID)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("the SecAgg+ workflow only uses send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("the SecAgg+ workflow only uses send_and_receive")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = [self._deliver(message) for message in messages]
        self.received.extend(replies)
        return replies

    def _deliver(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        message = _over_the_wire(message)
        try:
            reply = self.apps[node_id](message, self.contexts[node_id])
        except Exception as exc:  # what a SuperNode turns a ClientApp exception into
            reply = Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
        assert reply.metadata.src_node_id == node_id  # a reply comes from its destination
        return _over_the_wire(reply)


def _over_the_wire(message: Message) -> Message:
    """The message as the other side gets it: through Flower's protobuf serialisation."""
    return message_from_proto(message_to_proto(message))


@dataclass
class CapturingFedAvg(FedAvg):
    """FedAvg that keeps what ``aggregate_fit`` received (SecAgg+ puts the unmasked mean in
    every result)."""

    aggregated: list[list[np.ndarray]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(fraction_fit=1.0, min_fit_clients=2, min_available_clients=2)

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        self.failures.extend(failures)
        for _, fit_res in results:
            self.aggregated.append(parameters_to_ndarrays(fit_res.parameters))
        return super().aggregate_fit(server_round, results, failures)


class FixedDeltaClient(NumPyClient):
    """Returns a fixed delta with weight 1, or raises (a node that fails after key sharing)."""

    def __init__(self, delta: Sequence[np.ndarray], fail: bool = False) -> None:
        self.delta = list(delta)
        self.fail = fail

    def fit(self, parameters: Any, config: Any) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        if self.fail:
            raise RuntimeError("this node fails after key sharing")
        return self.delta, 1, {}


def fixed_client_fn(delta: Sequence[np.ndarray], fail: bool = False) -> Callable[[Context], Client]:
    """A ``client_fn`` for :class:`FixedDeltaClient`."""
    client = FixedDeltaClient(delta, fail)

    def client_fn(context: Context) -> Client:
        return client.to_client()

    return client_fn


def run_secagg_round(
    workflow: Callable[[Grid, LegacyContext], None],
    apps: dict[int, ClientApp],
    strategy: FedAvg,
    shapes: Sequence[tuple[int, ...]],
    node_configs: dict[int, dict[str, Any]] | None = None,
) -> LoopbackGrid:
    """Run one SecAgg+ fit round (as ``DefaultWorkflow`` does) over :class:`LoopbackGrid`."""
    contexts = {
        nid: Context(RUN_ID, nid, dict((node_configs or {}).get(nid, {})), RecordDict(), {})
        for nid in apps
    }
    grid = LoopbackGrid(apps, contexts)
    manager = SimpleClientManager()
    for nid in apps:
        manager.register(GridClientProxy(nid, grid, RUN_ID))
    server_context = Context(RUN_ID, 0, {}, RecordDict(), {})
    legacy = LegacyContext(
        server_context, config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=manager
    )
    params = ndarrays_to_parameters([np.zeros(shape, np.float32) for shape in shapes])
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(params, True)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: 1})
    with server_identity():
        workflow(grid, legacy)
    return grid


@contextlib.contextmanager
def server_identity() -> Iterator[None]:
    """Let Flower create instruction messages in this process, as the server's task does."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
