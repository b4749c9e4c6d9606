"""What the instances answering one phone line share, behind one small interface.

A call's webhook and its stream may reach different instances, and an API request may reach
an instance other than the one holding the call. So the stream tokens, the replay guard, the
duplicate-stream guard, the call cap, the registry of live calls and the commands sent to a
call go through a `SharedState`: `LocalState` keeps them in this process (the default, and
all a single instance needs); `server/redis_state.py` keeps them in Redis when `REDIS_URL`
is set. Nothing on the audio path touches either: a call costs a few operations when it is
announced, admitted and ended, none per frame.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from callbridge.server.call_registry import CallInfo, CallRegistry

# Why a webhook's call was not admitted by the shared cap.
GLOBAL_LIMIT = "global call limit reached"
SHARED_STATE_DOWN = "shared state unavailable"


class Command(msgspec.Struct, frozen=True):
    """An instruction for the instance holding a call: a name from the handler table in
    `server/control.py`, the call, and the command's own arguments."""

    name: str
    call_id: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)


# Performs a command on this instance: None if done, else why not (fixed text).
CommandHandler = Callable[[Command], str | None]
# Given what another instance published for the console's live feed (`publish_feed`).
FeedListener = Callable[[bytes], None]
# Told the calls an instance held when it was found dead (its id, their call ids).
InstanceLostHandler = Callable[[str, list[str]], Awaitable[None]]


class CommandResult(msgspec.Struct, frozen=True):
    delivered: bool
    instance_id: str | None = None  # the instance holding the call, when known
    error: str | None = None  # why not delivered, or the handler's refusal (local only)


class SharedState(abc.ABC):
    """The interface. Every method is safe to call with the backend down: it falls back to
    this instance's own knowledge, or refuses, as the operator chose, and never raises."""

    distributed = False

    def __init__(
        self, registry: CallRegistry, instance_id: str, own_url: str | None = None
    ) -> None:
        self.registry = registry  # this instance's own view, kept in both implementations
        self.instance_id = instance_id
        # The public base URL that reaches this instance alone (`instance_urls.direct_url`).
        self.own_url = own_url
        self.operations = 0  # round trips to the backend (the benchmark and metrics read it)
        self.degraded = 0  # operations answered without the backend
        self._on_command: CommandHandler = _not_started
        self._on_instance_lost: InstanceLostHandler = _nobody_told
        # The console's live feed, when it is on: told what other instances publish.
        self.feed_listeners: list[FeedListener] = []

    async def start(
        self, on_command: CommandHandler, on_instance_lost: InstanceLostHandler
    ) -> None:
        self._on_command = on_command
        self._on_instance_lost = on_instance_lost

    async def close(self) -> None:  # noqa: B027 (nothing to close in-process)
        pass

    @property
    def up(self) -> bool:
        return True

    @abc.abstractmethod
    async def announce(self, info: CallInfo, limit: int | None) -> str | None:
        """A webhook's call: hold a slot under `limit` (calls across instances, None: no
        limit) and publish its stream token. None if admitted, else why not."""

    @abc.abstractmethod
    async def call_id_for_sid(self, call_sid: str) -> str | None:
        """The call id a webhook gave this CallSid, on any instance."""

    @abc.abstractmethod
    async def holder(self, call_id: str) -> str | None:
        """The instance whose stream for this call is live, or None."""

    @abc.abstractmethod
    async def first_use(self, digest: bytes) -> bool:
        """The replay guard across instances: False if this signed request was seen."""

    @abc.abstractmethod
    async def admit_stream(
        self, call_id: str, token: str | None, call_sid: str | None
    ) -> str | None:
        """A stream presents its token: exactly once, on any instance, while no other
        stream for the call is live. None if admitted (now live here), else why not."""

    @abc.abstractmethod
    async def call_ended(self, call_id: str) -> None:
        """The call's stream on this instance is over: its slot is free."""

    @abc.abstractmethod
    async def send(self, command: Command) -> CommandResult:
        """Deliver a command to the instance holding the call."""

    async def instance_url(self, instance_id: str) -> str | None:
        """The public base URL that reaches that instance alone (its
        CALLBRIDGE_INSTANCE_URL, no trailing slash), or None: not known, or not addressable.
        In-process: this instance's own, if it has one."""
        return self.own_url if instance_id == self.instance_id else None

    async def share_setup(self, call_id: str, setup: str) -> None:  # noqa: B027
        """Keep what a call's set-up decided (plain JSON text, `server/setup_handoff.py`)
        for the instance its stream reaches. In-process: the registry has it already."""

    async def shared_setup(self, call_id: str) -> str | None:
        """What `share_setup` kept for a call, or None."""
        return None

    def publish_feed(self, message: bytes) -> None:  # noqa: B027
        """Hand a live-feed message to the other instances' `feed_listeners`, in the
        background (never waits). In-process: there are no other instances."""


def _not_started(command: Command) -> str | None:
    return "not started"


async def _nobody_told(instance_id: str, call_ids: list[str]) -> None:
    pass


class LocalState(SharedState):
    """One instance on its own: everything is in this process (`CallRegistry`, and the
    authenticator's own replay memory)."""

    async def announce(self, info: CallInfo, limit: int | None) -> str | None:
        registry = self.registry
        if limit is not None and len(registry.live) + registry.pending_count() >= limit:
            return GLOBAL_LIMIT  # one instance: the global cap is a second local one
        registry.announce(info)
        return None

    async def call_id_for_sid(self, call_sid: str) -> str | None:
        return self.registry.call_id_for_sid(call_sid)

    async def holder(self, call_id: str) -> str | None:
        return self.instance_id if call_id in self.registry.live else None

    async def first_use(self, digest: bytes) -> bool:
        return True  # the authenticator's memory is the whole guard

    async def admit_stream(
        self, call_id: str, token: str | None, call_sid: str | None
    ) -> str | None:
        return self.registry.redeem_token(call_id, token, call_sid)

    async def call_ended(self, call_id: str) -> None:
        pass

    async def send(self, command: Command) -> CommandResult:
        if command.call_id not in self.registry.live:
            return CommandResult(delivered=False, error="call is not live")
        error = self._on_command(command)
        return CommandResult(delivered=error is None, instance_id=self.instance_id, error=error)


class SharedStateCollector(Collector):
    """This instance's side of the shared state, for /metrics (read at scrape time)."""

    def __init__(self, shared: SharedState) -> None:
        self._shared = shared

    def collect(self) -> Iterator[Metric]:
        shared = self._shared
        info = GaugeMetricFamily(
            "callbridge_instance",
            "This instance (1), by its id and where it keeps shared state.",
            labels=["instance_id", "shared_state"],
        )
        info.add_metric([shared.instance_id, "redis" if shared.distributed else "local"], 1)
        yield info
        yield GaugeMetricFamily(
            "callbridge_shared_state_up", "1 while the shared state answers.", 1 if shared.up else 0
        )
        yield CounterMetricFamily(
            "callbridge_shared_state_operations",
            "Round trips to the shared state (none per audio frame).",
            shared.operations,
        )
        yield CounterMetricFamily(
            "callbridge_shared_state_degraded",
            "Operations answered without the shared state (it did not answer).",
            shared.degraded,
        )
