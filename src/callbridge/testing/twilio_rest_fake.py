"""A fake of Twilio's REST Calls API, wired to a `TwilioSimulator`.

Point the ``twilio`` package at it with ``client.api.base_url = fake.base_url``. It
implements what callbridge uses of the Call resource
(https://www.twilio.com/docs/voice/api/call-resource):

* ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``: HTTP Basic auth, Twilio's
  validation errors (20003, 21201, 21205, 21211, 21212, 21213, 21219, 32018) in the legacy
  JSON error shape, 201 with a Call resource; then, in the background, the status
  callbacks (initiated, ringing, answered, completed: signed, ``SequenceNumber`` from 0,
  RFC 2822 ``Timestamp``) and the answer through `TwilioSimulator.answer_outbound_call`.
* ``POST .../Calls/{CallSid}.json``: ``Status=completed`` hangs up, ``Twiml``/``Url``
  redirect the live call (the stream gets ``stop``), 20404 for an unknown call, 21220 for
  a call that is no longer in progress. Inbound calls placed by the simulator can be
  updated too: that is how a bridge hangs up or transfers the calls it receives.
* ``GET .../Calls/{CallSid}.json``: the Call resource.
* Answering-machine detection: ``MachineDetection`` alone puts ``AnsweredBy`` on the
  answer's request; with ``AsyncAmd=true`` the answer goes ahead at once and the verdict
  (`answered_by`, or `send_amd_verdict`) is POSTed, signed, to ``AsyncAmdStatusCallback``
  with ``MachineDetectionDuration`` once the call's stream has started.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
from aiohttp import web

from callbridge.testing.twilio_simulator import (
    API_VERSION,
    CallEndedError,
    SimulatedCall,
    StatusHook,
    TwilioSimulator,
)

__all__ = ["FakeTwilioRest"]

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_CALL_EVENTS = ("initiated", "ringing", "answered", "completed")
_MAX_TWIML = 4000  # inline Twiml limit (32018)


def _rfc2822(moment: datetime | None = None) -> str:
    return format_datetime(moment or datetime.now(UTC))


def _error(status: int, code: int, message: str) -> web.Response:
    """Twilio's legacy error body, which twilio-python turns into TwilioRestException."""
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )


@dataclass
class _CallRecord:
    """A call created through the API, and what the fake knows about its progress."""

    sid: str
    from_: str
    to: str
    form: dict[str, list[str]]
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: str = "queued"
    start_time: datetime | None = None
    end_time: datetime | None = None
    events: tuple[str, ...] = ()
    sequence: int = 0
    call: asyncio.Future[SimulatedCall] | None = None
    task: asyncio.Task[None] | None = None

    def first(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None


class FakeTwilioRest:
    """Twilio's Calls REST API on loopback, executing calls through a simulator."""

    def __init__(
        self,
        simulator: TwilioSimulator,
        *,
        account_sid: str | None = None,
        auth_token: str | None = None,
        owned_numbers: Iterable[str] = ("+15550001111",),
        verified_numbers: Iterable[str] | None = None,
        callee_audio: bytes = b"",
        answered_by: str | None = "human",
    ) -> None:
        if auth_token is not None and auth_token != simulator.auth_token:
            # Status callbacks are signed by the simulator: one account, one token.
            raise ValueError("auth_token must match the simulator's auth_token")
        self.simulator = simulator
        self.account_sid = account_sid or simulator.account_sid
        self.auth_token = simulator.auth_token
        self.owned_numbers = frozenset(owned_numbers)
        self.verified_numbers = None if verified_numbers is None else frozenset(verified_numbers)
        self.callee_audio = callee_audio
        # The verdict asynchronous AMD reports on its own (None: only `send_amd_verdict`).
        self.answered_by = answered_by
        self.amd_callbacks_sent: list[dict[str, str]] = []
        self.base_url = ""
        self.created: list[dict[str, list[str]]] = []
        self.updated: list[tuple[str, dict[str, list[str]]]] = []
        self.status_callbacks_sent: list[dict[str, str]] = []
        self.errors: list[str] = []
        self._records: dict[str, _CallRecord] = {}
        self._order: list[_CallRecord] = []
        self._record_added = asyncio.Event()
        self._callback_sent = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeTwilioRest:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        prefix = "/2010-04-01/Accounts/{account_sid}/Calls"
        app.router.add_post(prefix + ".json", self._create)
        app.router.add_post(prefix + "/{call_sid}.json", self._update)
        app.router.add_get(prefix + "/{call_sid}.json", self._fetch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound_port}"

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for_call(self, index: int = 0, timeout: float = 5.0) -> SimulatedCall:
        """The simulated call of the `index`-th accepted create, once it is answered."""

        async def wait() -> SimulatedCall:
            while len(self._order) <= index:
                self._record_added.clear()
                await self._record_added.wait()
            future = self._order[index].call
            assert future is not None
            return await asyncio.shield(future)

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"created call #{index} not answered within {timeout}s") from None

    async def wait_status_callback(
        self, call_sid: str, status: str, timeout: float = 5.0
    ) -> dict[str, str]:
        """The status callback with this CallStatus for this call, once it was sent."""

        async def wait() -> dict[str, str]:
            while True:
                for params in self.status_callbacks_sent:
                    if params["CallSid"] == call_sid and params["CallStatus"] == status:
                        return params
                self._callback_sent.clear()
                await self._callback_sent.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no {status!r} callback for {call_sid} in {timeout}s") from None

    async def send_amd_verdict(
        self, call_sid: str, answered_by: str, duration_ms: int = 2400
    ) -> tuple[int, str]:
        """POST asynchronous AMD's verdict for a call created with ``AsyncAmd=true`` to its
        ``AsyncAmdStatusCallback``, signed; returns the server's (status, body)."""
        record = self._records.get(call_sid)
        url = record.first("AsyncAmdStatusCallback") if record else None
        if record is None or url is None:
            raise ValueError(f"call {call_sid} asked for no asynchronous AMD callback")
        params = {
            "AccountSid": self.account_sid,
            "AnsweredBy": answered_by,
            "CallSid": call_sid,
            "MachineDetectionDuration": str(duration_ms),
        }
        method = record.first("AsyncAmdStatusCallbackMethod") or "POST"
        answer = await self.simulator.request(url, method, params)
        self.amd_callbacks_sent.append(params)
        return answer

    # -- HTTP handlers -------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        try:
            auth = aiohttp.BasicAuth.decode(header)
        except ValueError:
            auth = None
        if (
            auth is None
            or auth.login != self.account_sid
            or auth.password != self.auth_token
            or request.match_info["account_sid"] != self.account_sid
        ):
            return _error(401, 20003, "Authenticate")
        return None

    async def _create(self, request: web.Request) -> web.Response:
        if (denied := self._authenticate(request)) is not None:
            return denied
        form = await request.post()
        multi = {key: [str(v) for v in form.getall(key)] for key in form}
        to = str(form.get("To") or "")
        from_ = str(form.get("From") or "")
        url = str(form.get("Url") or "")
        twiml = str(form.get("Twiml") or "")
        if not to:
            return _error(400, 21201, "No 'To' number is specified")
        if not _E164.match(to):
            return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not from_:
            return _error(400, 21213, "No 'From' number is specified")
        if from_ not in self.owned_numbers:
            return _error(400, 21212, f"Invalid 'From' Phone Number: {from_}")
        if self.verified_numbers is not None and to not in self.verified_numbers:
            return _error(
                400,
                21219,
                f"The number {to} is unverified. Trial accounts cannot call unverified "
                "numbers; verify it at twilio.com/user/account/phone-numbers/verified, "
                "or purchase a Twilio number to remove this limitation.",
            )
        if not url and not twiml:
            return _error(400, 21205, "Url parameter is required.")
        if url and not url.startswith(("http://", "https://")):
            return _error(400, 21205, f"Url is not a valid URL: {url}")
        if not url and len(twiml) > _MAX_TWIML:
            return _error(400, 32018, f"Twiml exceeds the {_MAX_TWIML} character limit")

        record = _CallRecord(
            sid="CA" + secrets.token_hex(16),
            from_=from_,
            to=to,
            form=multi,
        )
        record.call = asyncio.get_running_loop().create_future()
        if multi.get("StatusCallback"):
            # Repeated keys (twilio-python) or one space-separated value both occur.
            events = [e for v in multi.get("StatusCallbackEvent", []) for e in v.split()]
            record.events = tuple(e for e in _CALL_EVENTS if e in events) or ("completed",)
        self._records[record.sid] = record
        self._order.append(record)
        self.created.append(multi)
        self._record_added.set()
        record.task = self._spawn(self._lifecycle(record))
        return web.json_response(self._resource_of_record(record), status=201)

    async def _update(self, request: web.Request) -> web.Response:
        if (denied := self._authenticate(request)) is not None:
            return denied
        sid = request.match_info["call_sid"]
        record = self._records.get(sid)
        call = self._find_call(sid)
        if record is None and call is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        form = await request.post()
        multi = {key: [str(v) for v in form.getall(key)] for key in form}
        self.updated.append((sid, multi))
        status = str(form.get("Status") or "")
        url = str(form.get("Url") or "")
        twiml = str(form.get("Twiml") or "")
        method = str(form.get("Method") or "POST")

        if call is None:  # created but not answered yet: only cancelling makes sense
            assert record is not None
            if status in ("canceled", "completed") and record.task is not None:
                record.task.cancel()
                record.status = "canceled" if status == "canceled" else "completed"
                return web.json_response(self._resource_of_record(record))
            return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        if call.ended.is_set():
            return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        if status == "completed":
            # Done in the background like Twilio: a bridge awaiting this response must not
            # have to answer our close handshake first.
            self._spawn(call.hangup())
            if record is not None:
                record.status = "completed"
        elif status == "canceled":
            pass  # canceling an in-progress call has no effect
        elif status:
            return _error(400, 21218, f"Invalid Status: {status}")
        elif twiml:
            if len(twiml) > _MAX_TWIML:
                return _error(400, 32018, f"Twiml exceeds the {_MAX_TWIML} character limit")
            self._spawn(self._redirect(call, twiml=twiml))
        elif url:
            self._spawn(self._redirect(call, url=url, method=method))
        body = self._resource_of_record(record) if record else self._resource_of_call(call)
        if status == "completed":
            body["status"] = "completed"
        return web.json_response(body)

    async def _fetch(self, request: web.Request) -> web.Response:
        if (denied := self._authenticate(request)) is not None:
            return denied
        sid = request.match_info["call_sid"]
        record = self._records.get(sid)
        if record is not None:
            return web.json_response(self._resource_of_record(record))
        call = self._find_call(sid)
        if call is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(self._resource_of_call(call))

    # -- background work -----------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _redirect(
        self, call: SimulatedCall, *, twiml: str = "", url: str = "", method: str = "POST"
    ) -> None:
        try:
            if twiml:
                await call.redirect(twiml)
            else:
                await call.redirect_url(url, method)
        except CallEndedError:
            pass  # hung up meanwhile

    async def _lifecycle(self, record: _CallRecord) -> None:
        """queued -> initiated -> ringing -> answered: what Twilio does after a create."""
        try:
            await self._status(record, "initiated")
            record.status = "ringing"
            await self._status(record, "ringing")
            detect = record.first("MachineDetection")
            async_amd = (record.first("AsyncAmd") or "").lower() == "true"
            verdict = self.answered_by or "unknown"
            amd = {"AnsweredBy": verdict} if detect and not async_amd else None
            call = await self.simulator.answer_outbound_call(
                call_sid=record.sid,
                url=record.first("Url"),
                twiml=record.first("Twiml") if not record.first("Url") else None,
                method=record.first("Method") or "POST",
                from_=record.from_,
                to=record.to,
                callee_audio=self.callee_audio,
                status_callback=self._hook(record),
                extra_params=amd,
            )
            if detect and async_amd and self.answered_by is not None:
                await call.wait_started(10.0)
                await self.send_amd_verdict(record.sid, self.answered_by)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors.append(f"call {record.sid}: {exc!r}")

    def _hook(self, record: _CallRecord) -> StatusHook:
        async def hook(call: SimulatedCall, status: str) -> None:
            if status == "in-progress":
                record.status = "in-progress"
                record.start_time = datetime.now(UTC)
                if record.call is not None and not record.call.done():
                    record.call.set_result(call)
                await self._status(record, "answered")
            elif status == "completed":
                record.status = "completed"
                record.end_time = datetime.now(UTC)
                await self._status(record, "completed")

        return hook

    async def _status(self, record: _CallRecord, event: str) -> None:
        """Send one status callback if the call subscribed to `event`."""
        url = record.first("StatusCallback")
        if url is None or event not in record.events:
            return
        status = "in-progress" if event == "answered" else event
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": record.sid,
            "CallStatus": status,
            "Called": record.to,
            "Caller": record.from_,
            "CallbackSource": "call-progress-events",
            "Direction": "outbound-api",
            "From": record.from_,
            "SequenceNumber": str(record.sequence),
            "Timestamp": _rfc2822(),
            "To": record.to,
        }
        record.sequence += 1
        if event == "completed":
            seconds = 0
            if record.start_time is not None and record.end_time is not None:
                seconds = round((record.end_time - record.start_time).total_seconds())
            params["CallDuration"] = str(seconds)
            params["Duration"] = str(math.ceil(seconds / 60))  # billed minutes
        method = record.first("StatusCallbackMethod") or "POST"
        try:
            status_code, _ = await self.simulator.request(url, method, dict(params))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self.errors.append(f"status callback {url} failed: {exc!r}")
        else:
            if not 200 <= status_code < 300:
                self.errors.append(f"status callback {url} answered HTTP {status_code}")
        # Recorded once the request is over, so a test waiting for it sees the server's side.
        self.status_callbacks_sent.append(params)
        self._callback_sent.set()

    # -- resources -----------------------------------------------------------------------

    def _find_call(self, sid: str) -> SimulatedCall | None:
        for call in self.simulator.calls:
            if call.call_sid == sid:
                return call
        return None

    def _resource(
        self,
        *,
        sid: str,
        from_: str,
        to: str,
        direction: str,
        status: str,
        created: datetime,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{sid}"
        duration = None
        if start is not None and end is not None:
            duration = str(round((end - start).total_seconds()))
        return {
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": _rfc2822(created),
            "date_updated": _rfc2822(),
            "direction": direction,
            "duration": duration,
            "end_time": _rfc2822(end) if end else None,
            "forwarded_from": None,
            "from": from_,
            "from_formatted": from_,
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": sid,
            "start_time": _rfc2822(start) if start else None,
            "status": status,
            "subresource_uris": {
                "notifications": uri + "/Notifications.json",
                "recordings": uri + "/Recordings.json",
                "streams": uri + "/Streams.json",
                "events": uri + "/Events.json",
            },
            "to": to,
            "to_formatted": to,
            "trunk_sid": None,
            "uri": uri + ".json",
        }

    def _resource_of_record(self, record: _CallRecord) -> dict[str, Any]:
        return self._resource(
            sid=record.sid,
            from_=record.from_,
            to=record.to,
            direction="outbound-api",
            status=record.status,
            created=record.created_at,
            start=record.start_time,
            end=record.end_time,
        )

    def _resource_of_call(self, call: SimulatedCall) -> dict[str, Any]:
        return self._resource(
            sid=call.call_sid,
            from_=call.from_,
            to=call.to,
            direction=call.direction,
            status="completed" if call.ended.is_set() else "in-progress",
            created=datetime.now(UTC),
        )
