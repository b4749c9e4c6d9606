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
        encode: Callable[[bytes], bytes],
        clock: Callable[[], float],
        frame_seconds: float,
        slack_seconds: float,
    ) -> None:
        pass

    def take_relayed(self) -> int:
        return 0

    def route_to(self, agent: AudioSocket | None) -> None:
        pass


class AgentAudioSocket(AudioSocket):
    def configure_fast_path(
        self,
        decode: Callable[[memoryview], object],
        audio_type: type,
        encode: Callable[[str, bytes], bytes],
    ) -> None:
        pass

    def take_relayed(self) -> tuple[int, int]:
        return 0, 0

    def route_to(
        self, twilio: AudioSocket | None, stream_sid: Any, reply_id: Any, budget: int
    ) -> None:
        pass
