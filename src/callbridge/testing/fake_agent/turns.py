"""Turn detection: when the caller starts and stops talking, from the energy of their audio.

Everything is measured in bytes of input audio, not wall-clock time, so a test that sends
the same audio always gets the same turns.
"""

from __future__ import annotations

import enum

from callbridge.testing.fake_agent.formats import PCM, AudioFormat, energy

__all__ = ["Heard", "TurnDetector"]


class Heard(enum.Enum):
    """What a chunk of caller audio made of the conversation."""

    TURN_STARTED = enum.auto()
    TURN_ENDED = enum.auto()
    BARGE_IN = enum.auto()  # speech long enough to interrupt the reply playing


class TurnDetector:
    """Finds the caller's turns in their audio, chunk by chunk.

    Speech is audio at or above a threshold; a turn starts after enough of it and ends
    after enough silence. While the agent replies, speech may barge in instead.
    """

    __slots__ = (
        "_barge_in_bytes",
        "_end_silence_bytes",
        "_silence_bytes",
        "_speech_bytes",
        "_speech_start_bytes",
        "encoding",
        "in_turn",
    )

    def __init__(self) -> None:
        self.encoding = PCM.encoding
        self.in_turn = False
        self._speech_bytes = 0
        self._silence_bytes = 0
        self._speech_start_bytes = 0.0
        self._end_silence_bytes = 0.0
        self._barge_in_bytes = 0.0

    def configure(
        self,
        fmt: AudioFormat,
        speech_start_ms: float,
        end_of_turn_silence_ms: float,
        barge_in_ms: float,
    ) -> None:
        """The caller's audio format and the durations, turned into bytes of that format."""
        per_ms = fmt.bytes_per_second / 1000.0
        self.encoding = fmt.encoding
        self._speech_start_bytes = speech_start_ms * per_ms
        self._end_silence_bytes = end_of_turn_silence_ms * per_ms
        self._barge_in_bytes = barge_in_ms * per_ms

    def feed(self, data: bytes, threshold: float, *, replying: bool) -> Heard | None:
        """Account for one chunk of caller audio; what it changed, if anything.

        ``threshold`` is the mean absolute amplitude (16-bit scale) that counts as speech.
        A started or ended turn is already counted here; a barge-in is only reported
        (the session decides whether the reply may be interrupted, then calls `begin`).
        """
        n = len(data)
        if energy(data, self.encoding) >= threshold:
            self._speech_bytes += n
            self._silence_bytes = 0
            if self.in_turn:
                return None
            if replying:
                return Heard.BARGE_IN if self._speech_bytes >= self._barge_in_bytes else None
            if self._speech_bytes >= self._speech_start_bytes:
                self.begin()
                return Heard.TURN_STARTED
            return None
        self._speech_bytes = 0
        if self.in_turn:
            self._silence_bytes += n
            if self._silence_bytes >= self._end_silence_bytes:
                self.reset()
                return Heard.TURN_ENDED
        return None

    def begin(self) -> None:
        """The caller is talking: a turn is under way."""
        self.in_turn = True
        self._silence_bytes = 0

    def reset(self) -> None:
        """No turn and nothing counted: after a turn, or when the socket is gone."""
        self._speech_bytes = 0
        self._silence_bytes = 0
        self.in_turn = False
