"""CallRunner's admission of a stream whose answer comes from elsewhere (the shared state):
the frames after `start` wait for it, then go on in order; a refusal closes the stream."""

from __future__ import annotations

import asyncio
import base64
from typing import cast

from callbridge.bridge.actions import Action, Finished
from callbridge.bridge.call_bridge import CallBridge
from callbridge.bridge.inputs import TwilioClosed
from callbridge.logs import EventLogger
from callbridge.server.call_runner import CallRunner
from callbridge.transport import CloseCode
from callbridge.twilio import media_stream as twilio
from callbridge.twilio.socket import EventHandler, TextHandler
from tests.helpers.raw_twilio import media_frame, start_frame
from tests.unit.test_call_runner import _ScriptedBridge, _TwilioSocket

PAYLOADS = [base64.b64encode(bytes([n]) * 160).decode() for n in range(3)]


class _Socket(_TwilioSocket):
    """Sends `start` and three media frames at once, then waits to be closed."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered = asyncio.Event()

    async def serve(self, on_text: TextHandler, on_event: EventHandler) -> None:
        frames = [start_frame("token")] + [
            media_frame(p, seq=n + 2) for n, p in enumerate(PAYLOADS)
        ]
        for frame in frames:
            assert on_text(frame.encode())
        self.delivered.set()
        await self._closed.wait()


class _Bridge(_ScriptedBridge):
    def __init__(self) -> None:
        super().__init__(_script)
        self.all_media = asyncio.Event()

    def media_to_agent(self, msg: object) -> bytes:
        out = super().media_to_agent(msg)
        if len([e for e in self.fed if isinstance(e, twilio.Media)]) == len(PAYLOADS):
            self.all_media.set()
        return out


def _script(event: object) -> list[Action]:
    return [Finished("test")] if isinstance(event, TwilioClosed) else []


async def _no_agent() -> object:
    raise AssertionError("never dialled")


async def _call(verdict: asyncio.Future[str | None]) -> tuple[_Bridge, _Socket, CallRunner]:
    bridge = _Bridge()
    socket = _Socket()
    runner = CallRunner(
        call_id="call-test",
        twilio_socket=socket,
        bridge=cast(CallBridge, bridge),
        dial_agent=_no_agent,  # type: ignore[arg-type]
        log=EventLogger("test", call_id="call-test"),
        admit=lambda start: verdict,
    )
    return bridge, socket, runner


async def test_frames_wait_for_the_admission_then_go_on_in_order() -> None:
    verdict: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    bridge, socket, runner = await _call(verdict)
    running = asyncio.create_task(runner.run())
    await socket.delivered.wait()
    assert not [e for e in bridge.fed if isinstance(e, twilio.Start | twilio.Media)]
    verdict.set_result(None)
    async with asyncio.timeout(5):
        await bridge.all_media.wait()
        fed = [e for e in bridge.fed if isinstance(e, twilio.Start | twilio.Media)]
        assert isinstance(fed[0], twilio.Start)
        payloads = [base64.b64encode(m.media.payload).decode() for m in fed[1:]]  # type: ignore[union-attr]
        assert payloads == PAYLOADS
        await socket.close(1000)
        await running


async def test_a_refused_stream_is_closed_and_never_reaches_the_bridge() -> None:
    verdict: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    bridge, socket, runner = await _call(verdict)
    verdict.set_result("wrong stream token")
    async with asyncio.timeout(5):
        await runner.run()
    assert socket.close_code == CloseCode.POLICY_VIOLATION
    assert not [e for e in bridge.fed if isinstance(e, twilio.Start | twilio.Media)]
