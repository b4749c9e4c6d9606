"""The fast path's interface in plain Python, where the compiled module is missing or
turned off: routes are accepted and ignored, so every frame takes the full path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from picows import WSFrame, WSListener, WSTransport


class AudioSocket(WSListener):
    def __init__(self) -> None:
        # The socket's transport while frames may go straight to it; see `_compiled.pyx`.
        self.direct: WSTransport | None = None
        # We ended the socket: frames still in the read buffer are ignored.
        self.stopped = False

    def _on_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        raise NotImplementedError


class TwilioAudioSocket(AudioSocket):
    def __init__(self) -> None:
        super().__init__()
        self.media_due = float("-inf")

    def configure_fast_path(
        self,
        decode: Callable[[memoryview], object],
        media_type: type,
        input_audio_parts: tuple[bytes, bytes],
        clock: Callable[[], float],
        frame_seconds: float,
        slack_seconds: float,
        mark_type: type,
        mark_prefix: str,
        echo_clock: Callable[[], float],
    ) -> None:
        pass


class AgentAudioSocket(AudioSocket):
    def _deliver(self, event: object) -> None:
        raise NotImplementedError

    def configure_fast_path(
        self,
        decode: Callable[[memoryview], object],
        audio_type: type,
        frame_parts: Callable[[str], tuple[bytes, bytes, bytes, bytes]],
        mark_every: int,
        audible_share: int = 16,
    ) -> None:
        pass


Relayed = tuple[int, int, int, list[int] | None, list[tuple[int, float]] | None]


def take_relayed(twilio: TwilioAudioSocket, agent: AgentAudioSocket) -> Relayed | None:
    return None


def set_routes(
    twilio: TwilioAudioSocket,
    agent: AgentAudioSocket,
    route: tuple[bool, Any, Any, int, int, int, bool],
) -> None:
    pass


def end_routes(twilio: TwilioAudioSocket, agent: AgentAudioSocket) -> None:
    pass
