"""`SharedState` in Redis (`REDIS_URL`): many instances answer one phone line.

Every operation that must hold across instances is one atomic step in Redis (a Lua script or
`SET NX`), taken at a call's webhook, its stream's admission and its end; none per audio
frame. Keys, under CALLBRIDGE_REDIS_PREFIX:

- `token:{call}`: the stream token's hash and the CallSid, until the stream redeems it.
- `sid:{CallSid}`: the call id a webhook gave that CallSid.
- `live:{call}`: the instance whose stream for the call is live; `calls:{instance}`: its
  calls. `slots`: every call announced or live, scored by when its hold expires (the
  global cap, MAX_CALLS_GLOBAL).
- `instance:{id}`: the instance's heartbeat, expiring after CALLBRIDGE_INSTANCE_TIMEOUT_SECONDS;
  `instances`: who has one. An instance whose heartbeat expired is lost: the first survivor
  to notice takes its calls (atomically, so only one does) and closes them in the records.
- `url:{id}`: the public URL that reaches the instance alone (CALLBRIDGE_INSTANCE_URL),
  written with its heartbeat and expiring with it; absent when it has none. Read only when
  another instance must send a call's Twilio requests there.
- `setup:{call}`: what the call's set-up decided (plain JSON), for the instance its stream
  reaches.
- `replay:{digest}`: signed webhooks already accepted.
- channel `control:{instance}`: commands for the calls an instance holds.
- channel `feed`: the record entries the console's live feed shows (a handful per turn),
  published by every instance whose console is on, read by every other one.

With Redis unreachable nothing fails: each operation falls back to this instance's own
knowledge (CALLBRIDGE_REDIS_DOWN=local, the default) or refuses new calls (refuse), counted
and logged once per outage; the connection is retried in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections import Counter, deque
from typing import Any, Literal

import msgspec
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from callbridge.logs import EventLogger
from callbridge.server.call_registry import PENDING_TTL_SECONDS, CallInfo, CallRegistry
from callbridge.server.shared_state import (
    GLOBAL_LIMIT,
    SHARED_STATE_DOWN,
    Command,
    CommandHandler,
    CommandResult,
    InstanceLostHandler,
    SharedState,
)
from callbridge.twilio.signatures import REPLAY_WINDOW_SECONDS, TOKEN_TTL_SECONDS

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: slots, token, sid. ARGV: call, hold ms, limit (0: none), token hash, CallSid,
# token ms, CallSid ms. 1 if held, 0 at the limit.
_ANNOUNCE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[7]) then redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
redis.call('HSET', KEYS[2], 'h', ARGV[4], 'sid', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[7]) end
return 1
"""
)

# KEYS: token, live, calls of this instance, slots, sid. ARGV: presented token's hash,
# presented CallSid, instance, call, hold ms, live ms. '' if admitted, else why not.
_ADMIT = (
    _NOW_MS
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'a stream for this call is already live' end
local h = redis.call('HGET', KEYS[1], 'h')
if not h then return 'unknown call id, or stream token already used or expired' end
if h ~= ARGV[1] then return 'wrong stream token' end
local sid = redis.call('HGET', KEYS[1], 'sid')
if sid and sid ~= '' and sid ~= ARGV[2] then return 'stream is for another CallSid' end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[6])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), ARGV[4])
if ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[5], ARGV[6]) end
return ''
"""
)

# KEYS: live, calls of this instance, slots. ARGV: instance, call. Nothing changes unless
# the call is live here (a refused duplicate must not free the slot of the real stream).
_END = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""

# KEYS: heartbeat, instances, calls of this instance, slots, URL of this instance. ARGV:
# instance, timeout ms, prefix, live ms, this process's mark, its URL ('' none), then the
# calls live here (so that a Redis that lost its data learns them again). Returns the mark
# the heartbeat had: another process's means two share this instance id.
_HEARTBEAT = (
    _NOW_MS
    + """
local before = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[2])
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[5], ARGV[6], 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[5])
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
for i = 7, #ARGV do
  local c = ARGV[i]
  redis.call('SADD', KEYS[3], c)
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), c)
  redis.call('SET', ARGV[3] .. ':live:' .. c, ARGV[1], 'NX', 'PX', ARGV[4])
end
-- Nothing is kept for ever: what no instance refreshes goes.
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
redis.call('PEXPIRE', KEYS[4], ARGV[4])
return before or ''
"""
)

# KEYS: instances, slots. ARGV: prefix, this instance ('' to take its own calls too).
# Takes the calls of every instance whose heartbeat expired: {{id, {calls}}, ...}.
_TAKE_LOST = """
local lost = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local own = id == ARGV[2]
  if (ARGV[2] == '' or not own) and redis.call('EXISTS', ARGV[1] .. ':instance:' .. id) == 0 then
    local key = ARGV[1] .. ':calls:' .. id
    local calls = redis.call('SMEMBERS', key)
    for _, c in ipairs(calls) do
      redis.call('ZREM', KEYS[2], c)
      local live = ARGV[1] .. ':live:' .. c
      if redis.call('GET', live) == id then redis.call('DEL', live) end
    end
    redis.call('DEL', key)
    redis.call('SREM', KEYS[1], id)
    table.insert(lost, {id, calls})
  end
end
return lost
"""

# KEYS: calls of this instance, slots. ARGV: prefix, instance. What a former run of this
# instance left (it stopped without ending its calls): freed.
_TAKE_OWN = """
local calls = redis.call('SMEMBERS', KEYS[1])
for _, c in ipairs(calls) do
  redis.call('ZREM', KEYS[2], c)
  local live = ARGV[1] .. ':live:' .. c
  if redis.call('GET', live) == ARGV[2] then redis.call('DEL', live) end
end
redis.call('DEL', KEYS[1])
return #calls
"""

# An announced call holds a slot this long for its stream (as `pending_count` counts it).
PENDING_HOLD_SECONDS = 60.0
_CONNECT_TIMEOUT_SECONDS = 1.0
_COMMAND_TIMEOUT_SECONDS = 2.0
_RETRY_SECONDS = 1.0
_LIVE_MARGIN_SECONDS = 600.0  # a live call's keys outlast its longest length by this
_FEED_BACKLOG = 4096  # live-feed messages held while Redis does not answer


def _token_hash(token: str | None) -> str:
    return hashlib.sha256((token or "").encode()).hexdigest()


class RedisState(SharedState):
    distributed = True

    def __init__(
        self,
        registry: CallRegistry,
        instance_id: str,
        *,
        url: str,
        prefix: str,
        instance_timeout: float,
        when_down: Literal["local", "refuse"],
        max_call_seconds: float,
        own_url: str | None = None,
    ) -> None:
        super().__init__(registry, instance_id, own_url)
        self._prefix = prefix
        self._timeout_ms = int(instance_timeout * 1000)
        self._heartbeat_seconds = instance_timeout / 3
        self._live_ms = int((max_call_seconds + _LIVE_MARGIN_SECONDS) * 1000)
        self._when_down = when_down
        self._redis: aioredis.Redis = aioredis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=_COMMAND_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._announce = self._redis.register_script(_ANNOUNCE)
        self._admit = self._redis.register_script(_ADMIT)
        self._end = self._redis.register_script(_END)
        self._heartbeat = self._redis.register_script(_HEARTBEAT)
        self._take_lost = self._redis.register_script(_TAKE_LOST)
        self._take_own = self._redis.register_script(_TAKE_OWN)
        self._up = True
        self.operations_by_kind: Counter[str] = Counter()  # logged at close (the benchmark)
        self._tasks: list[asyncio.Task[None]] = []
        self._log = EventLogger("shared_state", instance_id=instance_id)
        self._mark = secrets.token_hex(8)  # this process's, in its heartbeat
        self._namesake_beats = 0
        # Live-feed messages waiting to be published (dropped, oldest first, if Redis lags).
        self._feed_out: deque[bytes] = deque(maxlen=_FEED_BACKLOG)
        self._feed_waiting = asyncio.Event()
        self.feed_dropped = 0

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    @property
    def up(self) -> bool:
        return self._up

    # --- lifecycle ------------------------------------------------------------------------

    async def start(
        self, on_command: CommandHandler, on_instance_lost: InstanceLostHandler
    ) -> None:
        await super().start(on_command, on_instance_lost)
        left = await self._call(
            "start",
            self._take_own(
                keys=[self._key("calls", self.instance_id), self._key("slots")],
                args=[self._prefix, self.instance_id],
            ),
        )
        if left is not _DOWN and left:
            self._log.info("shared_state.freed_former_calls", calls=left)
        await self._beat()
        self._tasks = [
            asyncio.create_task(self._keep_beating()),
            asyncio.create_task(self._listen()),
        ]
        if self.feed_listeners:
            self._tasks.append(asyncio.create_task(self._publish_feed()))
        self._log.info("shared_state.started", backend="redis", up=self._up)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Gone on purpose: what it held is freed now, not when its heartbeat expires.
        await self._call(
            "stop",
            self._take_own(
                keys=[self._key("calls", self.instance_id), self._key("slots")],
                args=[self._prefix, self.instance_id],
            ),
        )
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(
                self._key("instance", self.instance_id), self._key("url", self.instance_id)
            )
            await self._redis.srem(self._key("instances"), self.instance_id)
        await self._redis.aclose()
        self._log.info(
            "shared_state.stopped",
            operations=dict(self.operations_by_kind),
            degraded=self.degraded,
        )

    # --- the interface --------------------------------------------------------------------

    async def announce(self, info: CallInfo, limit: int | None) -> str | None:
        sid = info.call_sid or ""
        held = await self._call(
            "announce",
            self._announce(
                keys=[self._key("slots"), self._key("token", info.call_id), self._key("sid", sid)],
                args=[
                    info.call_id,
                    int(PENDING_HOLD_SECONDS * 1000),
                    limit or 0,
                    _token_hash(info.stream_token),
                    sid,
                    int(TOKEN_TTL_SECONDS * 1000),
                    int(PENDING_TTL_SECONDS * 1000),
                ],
            ),
        )
        if held is _DOWN and self._when_down == "refuse":
            return SHARED_STATE_DOWN
        if held is not _DOWN and not held:
            return GLOBAL_LIMIT
        self.registry.announce(info)  # this instance's own cap, and the fallback
        return None

    async def call_id_for_sid(self, call_sid: str) -> str | None:
        found = await self._call("sid", self._redis.get(self._key("sid", call_sid)))
        if found is _DOWN or found is None:
            return self.registry.call_id_for_sid(call_sid)
        return str(found)

    async def holder(self, call_id: str) -> str | None:
        found = await self._call("holder", self._redis.get(self._key("live", call_id)))
        if found is _DOWN:
            return self.instance_id if call_id in self.registry.live else None
        return None if found is None else str(found)

    async def first_use(self, digest: bytes) -> bool:
        fresh = await self._call(
            "replay",
            self._redis.set(
                self._key("replay", digest.hex()),
                "1",
                nx=True,
                px=int(REPLAY_WINDOW_SECONDS * 1000),
            ),
        )
        return fresh is _DOWN or bool(fresh)  # down: the authenticator's memory still holds

    async def admit_stream(
        self, call_id: str, token: str | None, call_sid: str | None
    ) -> str | None:
        sid = call_sid or ""
        refusal = await self._call(
            "admit",
            self._admit(
                keys=[
                    self._key("token", call_id),
                    self._key("live", call_id),
                    self._key("calls", self.instance_id),
                    self._key("slots"),
                    self._key("sid", sid),
                ],
                args=[
                    _token_hash(token),
                    sid,
                    self.instance_id,
                    call_id,
                    self._timeout_ms,
                    self._live_ms,
                ],
            ),
        )
        if refusal is _DOWN:
            if self._when_down == "refuse":
                return SHARED_STATE_DOWN
            return self.registry.redeem_token(call_id, token, call_sid)
        if refusal:
            return str(refusal)
        # Admitted: the token is spent here too, if this instance answered the webhook.
        self.registry.redeem_token(call_id, token, call_sid)
        return None

    async def call_ended(self, call_id: str) -> None:
        freed = await self._call(
            "end",
            self._end(
                keys=[
                    self._key("live", call_id),
                    self._key("calls", self.instance_id),
                    self._key("slots"),
                ],
                args=[self.instance_id, call_id],
            ),
        )
        if freed is not _DOWN and freed:
            self._log.debug("shared_state.call_released", call_id=call_id)

    async def instance_url(self, instance_id: str) -> str | None:
        if instance_id == self.instance_id:
            return self.own_url
        found = await self._call("instance_url", self._redis.get(self._key("url", instance_id)))
        return None if found is _DOWN or found is None else str(found)

    async def share_setup(self, call_id: str, setup: str) -> None:
        await self._call(
            "share_setup",
            self._redis.set(self._key("setup", call_id), setup, px=int(PENDING_TTL_SECONDS * 1000)),
        )

    async def shared_setup(self, call_id: str) -> str | None:
        found = await self._call("setup", self._redis.get(self._key("setup", call_id)))
        return None if found is _DOWN or found is None else str(found)

    def publish_feed(self, message: bytes) -> None:
        if not self.feed_listeners:
            return  # this instance's console is off: its feed is not wanted
        if len(self._feed_out) == self._feed_out.maxlen:
            self.feed_dropped += 1
        self._feed_out.append(message)
        self._feed_waiting.set()

    async def send(self, command: Command) -> CommandResult:
        holder = await self.holder(command.call_id)
        if holder is None:
            return CommandResult(delivered=False, error="call is not live")
        if holder == self.instance_id:
            if command.call_id not in self.registry.live:  # ended here a moment ago
                return CommandResult(delivered=False, error="call is not live")
            error = self._on_command(command)
            return CommandResult(delivered=error is None, instance_id=holder, error=error)
        receivers = await self._call(
            "send",
            self._redis.publish(self._key("control", holder), msgspec.json.encode(command)),
        )
        if receivers is _DOWN:
            return CommandResult(delivered=False, instance_id=holder, error=SHARED_STATE_DOWN)
        if not receivers:
            return CommandResult(
                delivered=False,
                instance_id=holder,
                error="its instance is not answering",
            )
        return CommandResult(delivered=True, instance_id=holder)

    # --- background -----------------------------------------------------------------------

    async def _keep_beating(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            await self._beat()

    async def _beat(self) -> None:
        before = await self._call(
            "heartbeat",
            self._heartbeat(
                keys=[
                    self._key("instance", self.instance_id),
                    self._key("instances"),
                    self._key("calls", self.instance_id),
                    self._key("slots"),
                    self._key("url", self.instance_id),
                ],
                args=[
                    self.instance_id,
                    self._timeout_ms,
                    self._prefix,
                    self._live_ms,
                    self._mark,
                    self.own_url or "",
                    *self.registry.live,
                ],
            ),
        )
        self._note_namesake(before)
        lost = await self._call(
            "take_lost",
            self._take_lost(
                keys=[self._key("instances"), self._key("slots")],
                args=[self._prefix, self.instance_id],
            ),
        )
        if lost is _DOWN or not lost:
            return
        for instance_id, calls in lost:
            self._log.warning(
                "shared_state.instance_lost", lost_instance=instance_id, calls=len(calls)
            )
            try:
                await self._on_instance_lost(str(instance_id), [str(c) for c in calls])
            except Exception as exc:  # the records' business; the heartbeat goes on
                self._log.exception("shared_state.instance_lost_failed", exc)

    def _note_namesake(self, before: object) -> None:
        """Another process beating under this instance id (twice running: not just a former
        run of this one) makes a mess of both's calls: say so, once."""
        if before is _DOWN or before in ("", self._mark):
            self._namesake_beats = 0
            return
        self._namesake_beats += 1
        if self._namesake_beats == 2:
            self._log.error(
                "shared_state.instance_id_in_use",
                effect="two processes share one instance id: their calls are mixed up",
                fix="give each instance its own CALLBRIDGE_INSTANCE_ID",
            )

    async def _publish_feed(self) -> None:
        channel = self._key("feed")
        while True:
            await self._feed_waiting.wait()
            self._feed_waiting.clear()
            batch = list(self._feed_out)
            self._feed_out.clear()
            pipe = self._redis.pipeline(transaction=False)
            for message in batch:
                pipe.publish(channel, message)
            await self._call("feed", pipe.execute())  # down: these are lost, not retried

    async def _listen(self) -> None:
        channel = self._key("control", self.instance_id)
        feed = self._key("feed")
        channels = [channel, feed] if self.feed_listeners else [channel]
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                self._now_up()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    if message.get("channel") == feed:
                        self._feed_in(message.get("data"))
                    else:
                        self._dispatch(message.get("data"))
            except (RedisError, OSError) as exc:
                self._now_down("listen", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(_RETRY_SECONDS)

    def _feed_in(self, data: object) -> None:
        if not isinstance(data, str):
            return
        message = data.encode()
        for listener in self.feed_listeners:
            try:
                listener(message)
            except Exception as exc:  # the console's business; commands go on
                self._log.exception("shared_state.feed_failed", exc)

    def _dispatch(self, data: object) -> None:
        try:
            if not isinstance(data, str):
                raise TypeError("not text")
            command = msgspec.json.decode(data.encode(), type=Command)
        except (msgspec.DecodeError, TypeError, ValueError):
            self._log.warning("control.bad_command", why="not a command")
            return
        error = self._on_command(command)
        if error is not None:
            self._log.info(
                "control.not_performed", call_id=command.call_id, command=command.name, why=error
            )

    # --- every round trip -----------------------------------------------------------------

    async def _call(self, operation: str, pending: Any) -> Any:
        """The awaited result of one Redis operation, or _DOWN (counted, logged once)."""
        self.operations += 1
        self.operations_by_kind[operation] += 1
        try:
            result = await pending
        except (RedisError, OSError) as exc:
            self.degraded += 1
            self._now_down(operation, exc)
            return _DOWN
        self._now_up()
        return result

    def _now_down(self, operation: str, exc: BaseException) -> None:
        if self._up:
            self._up = False
            self._log.error(
                "shared_state.unavailable",
                backend="redis",
                operation=operation,
                error=f"{type(exc).__name__}: {exc}"[:300],
                effect="new calls admitted on this instance's own limits"
                if self._when_down == "local"
                else "new calls refused (CALLBRIDGE_REDIS_DOWN=refuse)",
            )

    def _now_up(self) -> None:
        if not self._up:
            self._up = True
            self._log.info("shared_state.restored", backend="redis")


class _Down:
    """The result of an operation Redis did not answer."""


_DOWN: Any = _Down()
