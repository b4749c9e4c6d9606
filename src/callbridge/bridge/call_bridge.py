"""One call's bridge between Twilio and the Voice Agent API, as a state machine. No I/O.

Feed it every decoded message from either socket and every adapter event (see
`inputs.py`); it returns the actions to perform (see `actions.py`). This module holds the
states, the dispatch and how a call ends; the policies it applies have modules of their
own: `barge_in`, `reconnect` (retry, resume, fresh session), `tool_results`,
`call_limits` (idle, length), `timers`, `playout_ledger` (what the caller heard, marks),
`record_entries`; the call verbs: `hang_up`, `keypad`, `silence`. Audio crosses as the
bytes msgspec decoded from base64, re-encoded on the way out.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from callbridge.agent import events as agent
from callbridge.bridge.actions import (
    Action,
    CancelTimer,
    CloseAgent,
    Finished,
    HangUp,
    Log,
    OpenAgent,
    Record,
    RedirectCall,
    RunTool,
    SendToAgent,
    SendToTwilio,
    StartTimer,
)
from callbridge.bridge.barge_in import BargeIn
from callbridge.bridge.call_limits import CallLength, IdleLimit
from callbridge.bridge.call_verbs import (
    ANNOUNCE_INSTRUCTIONS,
    ANNOUNCE_SECONDS,
    CALL_ENDED,
    DIAL_ANSWERED,
    DIAL_FAILURES,
    DIAL_SLACK_SECONDS,
    DIGITS_WAIT_SECONDS,
    MESSAGE_SECONDS,
    TRANSFER_FAILED_INSTRUCTIONS,
    TRANSFER_NOT_STARTED_INSTRUCTIONS,
    VERB_MARK,
    VOICEMAIL_INSTRUCTIONS,
    Phase,
    VerbState,
    tool_result,
)
from callbridge.bridge.hang_up import (
    HANG_UP_MARK,
    SAY_GOODBYE_INSTRUCTIONS,
    HangUpAfterGoodbye,
    HangUpBy,
    say_instructions,
)
from callbridge.bridge.inputs import (
    AgentClosed,
    AgentOpened,
    AgentOpenFailed,
    HangUpRequested,
    SayRequested,
    ServerShutdown,
    StreamOpened,
    TimerFired,
    ToolFinished,
    TwilioClosed,
    TwilioStreamEnded,
    UpdateSession,
)
from callbridge.bridge.keypad import KeypadInput
from callbridge.bridge.playout_ledger import PlayoutLedger
from callbridge.bridge.reattach import REATTACH_SECONDS, STREAM_LOST, StreamHandover
from callbridge.bridge.reconnect import Reconnect, fresh_config
from callbridge.bridge.record_entries import RecordEntries
from callbridge.bridge.session_changes import SessionChanges, merged
from callbridge.bridge.silence import Silence, SilenceRules
from callbridge.bridge.timers import Timer
from callbridge.bridge.tool_results import ToolResults
from callbridge.bridge.verb_events import (
    AmdVerdict,
    CallCompleted,
    DialEnded,
    DigitsRequested,
    RedirectFinished,
    TransferAnswered,
    TransferRequested,
)
from callbridge.keypad_input import KeypadRules
from callbridge.records import entries as records
from callbridge.tools import Tool
from callbridge.twilio import media_stream as twilio
from callbridge.twilio.media_stream import TwilioProtocolError
from callbridge.verbs import DIGITS_TOOL, MESSAGE_END, TRANSFER_TOOL, CallVerbs, VerbTool

APOLOGY_MARK = "callbridge-apology-played"
GOODBYE_MARK = "callbridge-goodbye-played"


class State(enum.Enum):
    AWAITING_START = "awaiting-start"  # Twilio socket open, no `start` yet
    CONNECTING = "connecting"  # opening the upstream socket
    CONFIGURING = "configuring"  # session.update sent, waiting for session.ready
    LIVE = "live"  # audio flows both ways
    RECONNECTING = "reconnecting"  # the upstream socket dropped: opening a new one
    RESUMING = "resuming"  # session.resume sent on the new socket
    ENDING = "ending"  # session.end sent or sockets closing
    APOLOGIZING = "apologizing"  # playing the apology, then hanging up
    DONE = "done"


_TRANSFER_PHASES = frozenset({Phase.ANNOUNCING, Phase.REDIRECTING, Phase.DIALING})

# A module global, not an enum member's look-up: the audio handlers run per frame.
_LIVE = State.LIVE


class AudioRoute(NamedTuple):
    """The audio the sockets may relay themselves until the bridge's next event."""

    to_agent: bool = False  # caller audio: each frame with audio, at real-time pace
    stream_sid: str | None = None  # agent audio to this stream (None: none) ...
    reply_id: str | None = None  # ... of this reply only ...
    budget: int = 0  # ... with a mark after the chunk that makes this many bytes go
    # Marks (to_agent only): those the fast path sends take the numbers from next_mark on;
    # Twilio's echo of any from marks_from up to the last sent may be held back and
    # handed over with the counts (what the caller heard, and when, is all an echo says).
    marks_from: int = 0
    next_mark: int = 0
    # Agent audio: only chunks judged quiet (`playout_ledger.is_audible`) may be relayed;
    # the reply's first audible one comes to the bridge, which times it and marks it.
    quiet_only: bool = False


_NO_ROUTE = AudioRoute()


class EndReason(enum.StrEnum):
    # Twilio sent `stop`: the caller hung up, or the call was redirected elsewhere (the
    # status callback tells which); either way this stream is over.
    STREAM_STOPPED = "stream-stopped"
    TWILIO_DISCONNECTED = "twilio-disconnected"  # socket closed without `stop`
    TWILIO_PROTOCOL_ERROR = "twilio-protocol-error"
    AGENT_ENDED = "agent-ended"  # the agent sent session.ended
    AGENT_ERROR = "agent-error"  # a fatal session.error
    AGENT_UNAVAILABLE = "agent-unavailable"  # could not open the upstream socket
    AGENT_DROPPED = "agent-dropped"  # upstream closed without session.ended
    SERVER_SHUTDOWN = "server-shutdown"
    TWILIO_IDLE = "twilio-idle"  # no media from Twilio for too long
    MAX_DURATION = "max-duration"
    TRANSFERRED = "transferred"  # the person the caller was transferred to answered
    NO_NEW_STREAM = "no-new-stream"  # the stream ended for a verb; no new one came
    VOICEMAIL_LEFT = "voicemail-left"  # the message played on an answering machine
    ANSWERING_MACHINE = "answering-machine"  # a machine answered; no message to leave
    FAX = "fax"  # a fax machine answered
    AGENT_HUNG_UP = "agent-hung-up"  # the agent's end_call, once its goodbye played
    OPERATOR_HUNG_UP = "operator-hung-up"  # the API, the command line
    CALLER_SILENT = "caller-silent"  # no word from the caller through every check-in


# Who ended a call, for its record.
_ENDED_BY: dict[EndReason, records.EndedBy] = {
    EndReason.STREAM_STOPPED: "caller",
    EndReason.TWILIO_DISCONNECTED: "caller",
    EndReason.TWILIO_IDLE: "caller",
    EndReason.AGENT_ENDED: "agent",
    EndReason.AGENT_ERROR: "agent",
    EndReason.AGENT_UNAVAILABLE: "agent",
    EndReason.AGENT_DROPPED: "agent",
    EndReason.SERVER_SHUTDOWN: "server",
    EndReason.TRANSFERRED: "agent",
    EndReason.VOICEMAIL_LEFT: "agent",
    EndReason.AGENT_HUNG_UP: "agent",
    EndReason.OPERATOR_HUNG_UP: "operator",
    EndReason.CALLER_SILENT: "agent",
}
_HUNG_UP_BY: dict[HangUpBy, EndReason] = {
    "agent": EndReason.AGENT_HUNG_UP,
    "operator": EndReason.OPERATOR_HUNG_UP,
    "silence": EndReason.CALLER_SILENT,
}


# Drops every call has and nobody need act on: caller audio that comes while the agent's
# session is being set up (Twilio streams from the first moment), and while the call ends
# (frames already on their way when we hang up). Any other drop is worth a warning.
_EXPECTED_DROPS = frozenset({"before-ready", "ending"})
# Timers cancelled when the call is over, in this order.
_CANCELLED_AT_THE_END = (
    Timer.SESSION_END,
    Timer.APOLOGY,
    Timer.IDLE,
    Timer.MAX_CALL,
    Timer.WRAP_UP,
    Timer.RETRY_BUDGET,
    Timer.READY,
    Timer.REATTACH,
    Timer.VERB,
    Timer.HANG_UP,
    Timer.KEYPAD,
    Timer.SILENCE,
)


def _worth_a_line(count: int) -> bool:
    """For a kind of bad input: log the first few in full, then one line per hundred, so a
    flood stays readable (the count is in each line and at the end)."""
    return count <= 5 or count % 100 == 0


class CallBridge:
    def __init__(
        self,
        *,
        session_config: Mapping[str, Any],
        tools: Sequence[Tool],
        follow_up: Mapping[str, Any] | None = None,
        setup_error: str | None = None,
        apology_payloads: Sequence[bytes] = (),
        apology_seconds: float = 0.0,
        ready_timeout: float = 15.0,
        end_wait: float = 2.0,
        idle_seconds: float | None = None,
        max_call_seconds: float | None = None,
        wrap_up_seconds: float = 20.0,
        connect_retry_seconds: float = 10.0,
        reconnect_seconds: float = 25.0,
        jitter: Callable[[], float] = random.random,
        call_id: str = "",
        direction: str = "inbound",
        verbs: CallVerbs | None = None,
        hang_up_wait_seconds: float = 15.0,
        keypad: KeypadRules | None = None,
        silence: SilenceRules | None = None,
        stream_lost_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.call_id = call_id
        self._direction = direction
        self._clock = clock
        self._ledger = PlayoutLedger(clock)
        self._records = RecordEntries(call_id, wall_clock)
        self._session_config = dict(session_config)
        # A stored agent's mutable fields, sent once each new session is ready.
        self._follow_up = dict(follow_up) if follow_up else None
        self._unsent: SessionChanges | None = None  # changes the live session lacks
        self._setup_error = setup_error  # the bot's set-up failed: recorded with the call
        self._tools = {t.name: t for t in tools}
        self._apology = tuple(apology_payloads)
        self._apology_seconds = apology_seconds
        self._ready_timeout = ready_timeout
        self._end_wait = end_wait
        self._idle = IdleLimit(idle_seconds, clock())
        self._length = CallLength(max_call_seconds, wrap_up_seconds)
        self._wrap_up_reason = EndReason.MAX_DURATION
        self._reconnect = Reconnect(
            connect_retry_seconds=connect_retry_seconds,
            reconnect_seconds=reconnect_seconds,
            jitter=jitter,
        )

        self._hang_up_request = HangUpAfterGoodbye(hang_up_wait_seconds)
        self._keypad = KeypadInput(keypad or KeypadRules(), self._keypad_tool_failed, self._records)
        self._silence = Silence(silence)
        self._caller_speaking = False
        self._after_reply: list[Action] = []  # frames for the agent once its reply is done

        self.state = State.AWAITING_START
        self.end_reason: EndReason | None = None
        self.end_detail = ""
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.custom_parameters: dict[str, str] = {}
        self.session_id: str | None = None

        self._twilio_open = True
        self._agent = "none"  # none | opening | open | closed

        self._current_reply: str | None = None
        self._barge_in = BargeIn(self._ledger)
        self._fenced_replies = self._barge_in.fenced  # read per reply frame: one look-up
        self._results = ToolResults(clock)
        self._verbs = VerbState(verbs or CallVerbs())
        self._verb_tools = self._verbs.config.tool_definitions()  # kept beside new tools
        self._handover = StreamHandover()
        # How long a call whose stream broke waits for Twilio's next one (0: it ends).
        self._stream_lost_seconds = stream_lost_seconds
        self._stream_lost_at: float | None = None  # wall clock: when the stream broke
        self._stop_received = False  # Twilio sent `stop` on the current stream

        self._media_dropped = 0  # media frames not relayed (frames_from_twilio is derived)
        self.frames_to_agent = 0
        self.frames_to_twilio = 0
        self.dropped: Counter[str] = Counter()
        self.rejected_frames = 0
        self.invalid_agent_events = 0

        self._handlers: dict[type, Callable[[Any], list[Action]]] = {
            twilio.Media: self._on_media,
            agent.ReplyAudio: self._on_reply_audio,
            twilio.Connected: self._on_connected,
            twilio.Start: self._on_start,
            twilio.Mark: self._on_mark,
            twilio.Dtmf: self._on_dtmf,
            twilio.Stop: self._on_stop,
            twilio.InvalidFrame: self._on_invalid_frame,
            TwilioClosed: self._on_twilio_closed,
            TwilioStreamEnded: self._on_twilio_stream_ended,
            TwilioProtocolError: self._on_twilio_protocol_error,
            AgentOpened: self._on_agent_opened,
            AgentOpenFailed: self._on_agent_open_failed,
            AgentClosed: self._on_agent_closed,
            agent.SessionReady: self._on_session_ready,
            agent.SessionUpdated: self._on_session_updated,
            agent.SessionError: self._on_session_error,
            agent.SessionEnded: self._on_session_ended,
            agent.SpeechStarted: self._on_speech_started,
            agent.SpeechStopped: self._on_speech_stopped,
            agent.UserTranscriptDelta: self._ignore,
            agent.UserTranscript: self._on_user_transcript,
            agent.ReplyStarted: self._on_reply_started,
            agent.AgentTranscriptDelta: self._ignore,
            agent.AgentTranscript: self._on_agent_transcript,
            agent.ReplyDone: self._on_reply_done,
            agent.ReplyError: self._on_reply_error,
            agent.ToolCall: self._on_tool_call,
            agent.UnknownEvent: self._on_unknown_event,
            agent.InvalidEvent: self._on_invalid_event,
            ToolFinished: self._on_tool_finished,
            TimerFired: self._on_timer,
            ServerShutdown: self._on_server_shutdown,
            StreamOpened: self._on_stream_opened,
            TransferRequested: self._on_transfer_requested,
            DigitsRequested: self._on_digits_requested,
            RedirectFinished: self._on_redirect_finished,
            DialEnded: self._on_dial_ended,
            TransferAnswered: self._on_transfer_answered,
            AmdVerdict: self._on_amd_verdict,
            CallCompleted: self._on_call_completed,
            UpdateSession: self._on_update_session,
            HangUpRequested: self._on_hang_up_requested,
            SayRequested: self._on_say_requested,
        }
        self._timer_handlers: dict[str, Callable[[TimerFired], list[Action]]] = {
            Timer.READY: self._no_ready_in_time,
            Timer.SESSION_END: self._no_session_ended_in_time,
            Timer.APOLOGY: self._apology_played,
            Timer.IDLE: self._idle_check,
            Timer.MAX_CALL: self._call_length_reached,
            Timer.WRAP_UP: self._no_goodbye_in_time,
            Timer.RETRY_BUDGET: self._retry_budget_spent,
            Timer.REATTACH: self._no_stream_in_time,
            Timer.VERB: self._verb_ready,
            Timer.HANG_UP: self._no_hang_up_goodbye_in_time,
            Timer.KEYPAD: self._keypad_timed_out,
            Timer.SILENCE: self._silence_waited,
        }

    def handle(self, event: object) -> list[Action]:
        """Take one event, return what to do. Never raises for any event it is given."""
        handler = self._handlers.get(type(event))
        if handler is None:
            return [Log.warning("bridge.unexpected_event", kind=type(event).__name__)]
        return handler(event)

    @property
    def direction(self) -> str:
        """The call's direction: inbound or outbound."""
        return self._direction

    @property
    def clock(self) -> Callable[[], float]:
        """The clock the bridge times things by (echoes held back by the fast path too)."""
        return self._clock

    @property
    def resumes(self) -> int:
        return self._reconnect.resumes

    @property
    def fresh_sessions(self) -> int:
        return self._reconnect.fresh_sessions

    @property
    def frames_from_twilio(self) -> int:
        """Media frames the bridge was given: relayed or dropped (one counter less a frame)."""
        return self.frames_to_agent + self._media_dropped

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "frames_from_twilio": self.frames_from_twilio,
            "frames_to_agent": self.frames_to_agent,
            "frames_to_twilio": self.frames_to_twilio,
            "dropped": dict(self.dropped),
            "rejected_frames": self.rejected_frames,
            "invalid_agent_events": self.invalid_agent_events,
            "resumes": self.resumes,
            "fresh_sessions": self.fresh_sessions,
        }

    # --- Twilio side ------------------------------------------------------------------

    def _on_stream_opened(self, _: StreamOpened) -> list[Action]:
        return [*self._idle.start(self._clock()), *self._length.start()]

    # --- the audio fast path ------------------------------------------------------------
    # Nearly every event of a call is an audio frame, one way or the other. The runner
    # hands each straight to these two (`handle()` does too, through `_on_media` and
    # `_on_reply_audio`): they return the frame to send in the common case, so it builds
    # no action list, or else the actions to perform (a mark after the chunk, a drop).
    # Every frame is so judged once, by one set of rules.
    #
    # Where the sockets relay audio themselves (`callbridge.fast_path`), they do it only
    # under the routes `audio_route` gives, which are exactly the cases where these two
    # would return a frame; `relayed` then counts those frames as if they had come here.

    def audio_route(self) -> AudioRoute:
        """Which audio may be relayed without coming here, until the next event."""
        if self.state is not _LIVE:
            return _NO_ROUTE
        window = self._ledger.relay_window(self._fenced_replies)
        reply_id, budget, marks_from, next_mark, quiet_only = window
        sid = self.stream_sid
        # tuple.__new__: a NamedTuple's own constructor is a Python call, once an event.
        if budget and sid is not None:
            return tuple.__new__(
                AudioRoute, (True, sid, reply_id, budget, marks_from, next_mark, quiet_only)
            )
        return tuple.__new__(AudioRoute, (True, None, None, 0, marks_from, next_mark, False))

    def relayed(
        self,
        to_agent: int,
        to_twilio: int,
        to_twilio_bytes: int,
        marks: Sequence[int] | None = None,
        echoes: Sequence[tuple[int, float]] | None = None,
    ) -> list[Action]:
        """Count what was relayed under the last `audio_route` (before any other event):
        frames each way, the reply's bytes, the marks sent after them (each as the bytes
        relayed up to it), and Twilio's echoes held back (mark number, when it came).
        Returns the records of the replies those echoes settled, as `_on_mark` would."""
        self.frames_to_agent += to_agent
        if to_twilio:
            self.frames_to_twilio += to_twilio
            self._ledger.count_relayed(to_twilio_bytes, marks or ())
        if echoes:
            self._ledger.marks_echoed(echoes)
            return self._settled_replies()
        return []

    def media_to_agent(self, msg: twilio.Media) -> bytes | list[Action]:
        payload = msg.media.payload
        if self.state is _LIVE and payload:
            self.frames_to_agent += 1
            return agent.encode_input_audio(payload)
        self._media_dropped += 1
        if self.state is _LIVE:
            return self._drop("bad-payload")  # live, so the payload was empty
        if self.state is State.AWAITING_START:
            return self._drop("before-start")
        if self.state in (State.RECONNECTING, State.RESUMING) or self._reconnect.session_lost:
            return self._drop("reconnecting")
        if self.state in (State.CONNECTING, State.CONFIGURING):
            return self._drop("before-ready")
        return self._drop("ending")

    def audio_to_twilio(self, msg: agent.ReplyAudio) -> bytes | list[Action]:
        data = msg.data
        sid = self.stream_sid
        if self.state is not _LIVE or sid is None:
            self.dropped["agent-audio-not-live"] += 1
            return []
        if msg.reply_id in self._fenced_replies:
            self.dropped["agent-audio-interrupted"] += 1
            return []
        if not data:
            return self._drop("agent-bad-payload", "to-twilio")
        self.frames_to_twilio += 1
        if self._ledger.count_unmarked(msg.reply_id, len(data)):
            return twilio.encode_media(sid, data)
        mark = self._ledger.count_marked(msg.reply_id, len(data), data)
        if mark is None:  # a quiet chunk before the reply's first audible one
            return twilio.encode_media(sid, data)
        return [
            SendToTwilio(twilio.encode_media(sid, data)),
            SendToTwilio(twilio.encode_mark(sid, mark)),
        ]

    def _on_media(self, msg: twilio.Media) -> list[Action]:
        out = self.media_to_agent(msg)
        return [SendToAgent(out)] if isinstance(out, bytes) else out

    def _drop(self, reason: str, direction: str = "to-agent") -> list[Action]:
        self.dropped[reason] += 1
        if self.dropped[reason] == 1:  # the first of each kind: counts come at the end
            log = Log.debug if reason in _EXPECTED_DROPS else Log.warning
            return [log("audio.dropped", reason=reason, direction=direction)]
        return []

    def _on_connected(self, _: twilio.Connected) -> list[Action]:
        return []

    def _on_start(self, msg: twilio.Start) -> list[Action]:
        if self.state is not State.AWAITING_START:
            if self.awaiting_stream and not self._twilio_open:
                return self._reattached(msg)
            return [Log.warning("twilio.duplicate_start")]
        self._handover.stream_started()
        info = msg.start
        self.stream_sid = info.stream_sid or msg.stream_sid
        self.call_sid = info.call_sid or None
        self.custom_parameters = {str(k): str(v) for k, v in info.custom_parameters.items()}
        self.state = State.CONNECTING
        self._agent = "opening"
        params = self.custom_parameters
        opened = self._records.opened(
            direction=params.get("direction", self._direction),
            call_sid=self.call_sid,
            stream_sid=self.stream_sid,
            from_number=params.get("from"),
            to_number=params.get("to"),
        )
        actions: list[Action] = [
            Log.info("stream.started", call_sid=self.call_sid, stream_sid=self.stream_sid),
            opened,
        ]
        if self._setup_error is not None:
            actions.append(self._records.error("setup", "setup_failed", self._setup_error))
        actions.append(OpenAgent())
        return actions

    def _on_mark(self, msg: twilio.Mark) -> list[Action]:
        if self._ledger.mark_echoed(msg.mark.name):
            return self._settled_replies()
        if msg.mark.name == VERB_MARK:
            return self._verb_ready()
        if msg.mark.name == APOLOGY_MARK and self.state is State.APOLOGIZING:
            return [CancelTimer(Timer.APOLOGY), *self._hang_up()]
        if msg.mark.name == GOODBYE_MARK and self._length.wrapping_up:
            return [CancelTimer(Timer.WRAP_UP), *self._end(self._wrap_up_reason)]
        if (
            msg.mark.name == HANG_UP_MARK
            and self._hang_up_request.requested
            and self.end_reason is None
        ):
            return [
                CancelTimer(Timer.HANG_UP),
                self._hang_up_record("after-goodbye"),
                *self._end(self._hung_up_reason()),
            ]
        return []

    def _on_dtmf(self, msg: twilio.Dtmf) -> list[Action]:
        # Never the key itself in the log: it may belong to a sensitive keypad argument.
        log = Log.debug("caller.keypad")
        if (
            self.state is not State.LIVE
            or self.end_reason is not None
            or self._hang_up_request.requested  # saying goodbye: keys change nothing now
        ):
            return [log]
        return [log, *self._silence.caller_spoke(), *self._keypad.pressed(msg.dtmf.digit)]

    def _on_stop(self, _: twilio.Stop) -> list[Action]:
        self._stop_received = True
        if self.end_reason is None and self._handover.expected is not None:
            return self._stream_handed_over()
        return [Log.info("stream.stopped"), *self._end(EndReason.STREAM_STOPPED)]

    def _on_invalid_frame(self, msg: twilio.InvalidFrame) -> list[Action]:
        self.rejected_frames += 1
        if _worth_a_line(self.rejected_frames):
            return [
                Log.warning("twilio.frame_rejected", reason=msg.reason, total=self.rejected_frames)
            ]
        return []

    def _on_twilio_closed(self, msg: TwilioClosed) -> list[Action]:
        self._twilio_open = False
        if self.end_reason is None and self._handover.expected is not None:
            return [] if self._handover.waiting else self._stream_handed_over()
        if self.end_reason is None:
            lost = [] if msg.ended_here else self._stream_lost()
            return lost or self._end(EndReason.TWILIO_DISCONNECTED)
        return self._finish_if_closed()

    def _on_twilio_stream_ended(self, _: TwilioStreamEnded) -> list[Action]:
        """Twilio ran the TwiML after `<Connect>`: the stream is over, whether or not the
        socket has closed on our side yet (a half-open connection)."""
        if self.end_reason is not None or self._handover.expected is not None:
            return []  # ending already, or a redirect of ours: its own `stop` handles it
        lost = self._stream_lost()
        if not lost:
            return self._end(EndReason.TWILIO_DISCONNECTED, "Twilio ended the stream")
        self._twilio_open = False
        return [*lost, HangUp()]  # whatever is left of the old socket

    def _stream_lost(self) -> list[Action]:
        """The stream broke without `stop`: wait for Twilio's next one (the `<Redirect>`
        after `</Connect>`). Nothing (the call ends) when waiting is off, before the
        stream started, or while the call is already saying goodbye."""
        if (
            not self._stream_lost_seconds
            or self.state in (State.AWAITING_START, State.APOLOGIZING)
            or self._hang_up_request.requested
            or self._length.wrapping_up
        ):
            return []
        self._stream_lost_at = self._records.now()
        self._handover.expect(STREAM_LOST)
        return [
            Log.warning("stream.lost", stream_sid=self.stream_sid),
            *self._stream_handed_over(),
        ]

    def _on_twilio_protocol_error(self, msg: TwilioProtocolError) -> list[Action]:
        actions: list[Action] = [Log.error("twilio.protocol_error", reason=msg.reason)]
        if self.end_reason is None:  # the record says why the call ended
            actions.append(self._records.error("twilio", "protocol_error", msg.reason))
        return actions + self._end(EndReason.TWILIO_PROTOCOL_ERROR, msg.reason)

    # --- agent side -------------------------------------------------------------------

    def _on_agent_opened(self, _: AgentOpened) -> list[Action]:
        self._agent = "open"
        if self.end_reason is not None:
            if self._reconnect.session_lost and self.session_id:
                # Resume only to end it: a dropped session is billed for its 30 s of grace.
                return [
                    SendToAgent(agent.encode_session_resume(self.session_id)),
                    SendToAgent(agent.SESSION_END),
                    StartTimer(Timer.SESSION_END, self._end_wait),
                ]
            return [CloseAgent()]  # the caller left while we were connecting
        if self.state not in (State.CONNECTING, State.RECONNECTING):
            return [Log.warning("agent.unexpected_open", state=self.state.value)]
        if self.session_id is not None and not self._reconnect.resume_refused:
            self.state = State.RESUMING
            first = agent.encode_session_resume(self.session_id)
        else:
            self.state = State.CONFIGURING
            self._unsent = None  # the new session's configuration has every change
            first = agent.encode_session_update(
                self._session_config
                if self.session_id is None
                else fresh_config(self._session_config)
            )
        return [SendToAgent(first), StartTimer(Timer.READY, self._ready_timeout)]

    def _on_agent_open_failed(self, msg: AgentOpenFailed) -> list[Action]:
        if self._agent != "opening":
            return [Log.warning("agent.unexpected_open_failure", state=self.state.value)]
        self._agent = "closed"
        if self.end_reason is not None:
            return self._finish_if_closed()
        return self._retry_agent(msg.reason)

    def _on_agent_closed(self, msg: AgentClosed) -> list[Action]:
        was_open = self._agent == "open"
        self._agent = "closed"
        if self.end_reason is None and not was_open and self._handover.waiting:
            # Neither side is there: nothing would ever finish the call.
            return self._end(EndReason.AGENT_DROPPED, "the agent's socket closed between streams")
        if self.end_reason is not None or not was_open:
            return self._finish_if_closed()
        detail = f"closed with code {msg.code}" if msg.code is not None else "connection lost"
        if msg.reason:
            detail += f": {msg.reason}"
        return self._retry_agent(detail)

    def _retry_agent(self, detail: str) -> list[Action]:
        """Open the upstream socket again (`reconnect`); caller audio is dropped meanwhile."""
        reconnect = self._reconnect
        was_live = self.state is State.LIVE
        if reconnect.budget_spent:
            return self._fail(self._gave_up_reason(), f"gave up reconnecting: {detail}")
        actions: list[Action] = []
        budget = reconnect.budget(self.session_id is not None)
        if budget is not None:
            actions.append(StartTimer(Timer.RETRY_BUDGET, budget))
        if was_live:
            reconnect.session_lost = True
            actions.append(Log.warning("agent.dropped", detail=detail, session_id=self.session_id))
            if self.stream_sid is not None:
                # Whatever half of a reply Twilio still buffers would end mid-word anyway.
                actions += self._barge_in.clear(self.stream_sid)
            if self._current_reply is not None:
                self._fenced_replies.add(self._current_reply)
            self._current_reply = None
        refused = self.state is State.RESUMING and reconnect.resume_refused
        self.state = State.RECONNECTING
        self._agent = "opening"
        delay = reconnect.next_delay(refused)
        actions += [
            Log.info(
                "agent.reconnecting",
                attempt=reconnect.attempt,
                delay=round(delay, 3),
                detail=detail,
            ),
            CancelTimer(Timer.READY),
            OpenAgent(delay),
        ]
        return actions

    def _gave_up_reason(self) -> EndReason:
        if self._reconnect.session_lost:
            return EndReason.AGENT_DROPPED
        return EndReason.AGENT_UNAVAILABLE

    def _on_session_ready(self, msg: agent.SessionReady) -> list[Action]:
        if self.state not in (State.CONFIGURING, State.RESUMING):
            return [Log.warning("agent.unexpected_ready", state=self.state.value)]
        resumed = self.state is State.RESUMING
        fresh_after_loss = not resumed and self.session_id is not None
        self.state = State.LIVE
        self.session_id = msg.session_id
        self._reconnect.ready()
        actions: list[Action] = [
            CancelTimer(Timer.READY),
            CancelTimer(Timer.RETRY_BUDGET),
            self._records.session_started(msg.session_id, resumed),
            *self._session_updates(resumed),
        ]
        if resumed:
            self._reconnect.resumes += 1
            # Results that finished while we were away are what the agent is waiting for.
            self._results.may_flow = True
            actions.append(Log.info("agent.resumed", session_id=msg.session_id))
            return actions + self._flush_results()
        if fresh_after_loss:
            self._reconnect.fresh_sessions += 1
            self._results.forget()
            self._results.may_flow = True
            actions.append(Log.warning("agent.fresh_session", session_id=msg.session_id))
            return actions
        actions.append(Log.info("agent.ready", session_id=msg.session_id))
        if self._verbs.message_pending and "greeting" not in self._session_config:
            actions += self._leave_message()  # a machine answered; the agent would wait
        if not self._session_config.get("greeting"):  # the agent waits for the caller
            actions += self._silence.played_out()
        return actions

    def _on_session_updated(self, msg: agent.SessionUpdated) -> list[Action]:
        if not isinstance(msg.config, dict):  # older servers send no config
            return [Log.debug("agent.session_updated")]
        return [Log.debug("agent.session_updated"), self._records.session_configured(msg.config)]

    # --- changing the live session (what may change: `session_changes`) ---------------

    def _on_update_session(self, msg: UpdateSession) -> list[Action]:
        changes = msg.changes
        names = changes.names()
        if self.end_reason is not None:
            return [Log.warning("agent.session_update_dropped", fields=names, why="call ending")]
        if changes.tools is not None:
            self._tools = {t.name: t for t in changes.tools}
        # A new session after a lost one starts with the changes made.
        if self._follow_up is not None:
            self._follow_up = merged(self._follow_up, changes, self._verb_tools)
        else:
            self._session_config = merged(self._session_config, changes, self._verb_tools)
        log = Log.info("agent.session_update", fields=names, source=msg.source)
        if self.state is State.LIVE and self._agent == "open":
            return [log, SendToAgent(agent.encode_session_update(changes.wire(self._verb_tools)))]
        # Sent once the session is ready (a resumed one lacks it).
        unsent = self._unsent
        self._unsent = (
            changes
            if unsent is None
            else SessionChanges(
                *(
                    getattr(changes, n) if getattr(changes, n) is not None else getattr(unsent, n)
                    for n in SessionChanges.__struct_fields__
                )
            )
        )
        return [log]

    def _session_updates(self, resumed: bool) -> list[Action]:
        """What a session needs once ready: a stored agent's mutable fields (a new session
        only), then the changes made while it was not live."""
        actions: list[Action] = []
        if not resumed and self._follow_up:
            actions.append(SendToAgent(agent.encode_session_update(self._follow_up)))
        if self._unsent is not None:
            actions.append(
                SendToAgent(agent.encode_session_update(self._unsent.wire(self._verb_tools)))
            )
            self._unsent = None
        return actions

    def _on_session_error(self, msg: agent.SessionError) -> list[Action]:
        kind = agent.classify_error(msg, configuring=self.state is State.CONFIGURING)
        level = logging.WARNING if kind in ("ignore", "resume-refused") else logging.ERROR
        fields = {"code": msg.code, "message": msg.message[:300], "param": msg.param, "kind": kind}
        log = Log(level, "agent.error", fields)
        error = self._records.error("agent", msg.code, msg.message)
        if self.end_reason is not None or kind == "ignore":
            return [log, error]
        if kind == "fatal":
            return [log, error, *self._fail(EndReason.AGENT_ERROR, msg.code)]
        if kind == "resume-refused":
            self._reconnect.resume_refused = True
        # Retry on a fresh socket: closing this one brings AgentClosed, and the retry.
        return [log, error, *self._close_agent()]

    def _on_session_ended(self, _: agent.SessionEnded) -> list[Action]:
        if self.end_reason is not None:
            return [CancelTimer(Timer.SESSION_END), *self._close_agent()]
        self.end_reason = EndReason.AGENT_ENDED
        self.state = State.ENDING
        return [
            Log.info("agent.session_ended"),
            CancelTimer(Timer.READY),
            *self._close_agent(),
            *self._hang_up(),
        ]

    def _on_speech_started(self, _: agent.SpeechStarted) -> list[Action]:
        self._results.may_flow = False
        self._caller_speaking = True
        silence = self._silence.caller_spoke()
        if self.state is not State.LIVE or self.stream_sid is None:
            return silence
        return silence + self._barge_in.speech_started(self._current_reply, self.stream_sid)

    def _on_speech_stopped(self, _: agent.SpeechStopped) -> list[Action]:
        self._caller_speaking = False
        self._ledger.turn_ended()
        return [Log.debug("caller.speech_stopped")]

    def _on_user_transcript(self, msg: agent.UserTranscript) -> list[Action]:
        line = self._records.caller_line(msg.text)
        return [Log.debug("transcript.caller", text=msg.text), line]

    def _on_reply_started(self, msg: agent.ReplyStarted) -> list[Action]:
        self._current_reply = msg.reply_id
        self._ledger.reply_started(msg.reply_id)
        self._verbs.reply_started(msg.reply_id)
        self._length.reply_started(msg.reply_id)
        self._hang_up_request.reply_started(msg.reply_id)
        self._results.may_flow = False
        log = Log.debug("agent.reply_started", reply_id=msg.reply_id)
        if self._verbs.message_pending:  # a machine answered before the agent was ready
            return [log, *self._leave_message()]
        return [log, *self._silence.disarm()]

    def _on_reply_audio(self, msg: agent.ReplyAudio) -> list[Action]:
        out = self.audio_to_twilio(msg)
        return [SendToTwilio(out)] if isinstance(out, bytes) else out

    def _on_agent_transcript(self, msg: agent.AgentTranscript) -> list[Action]:
        self._ledger.transcript(msg.reply_id, msg.text, msg.interrupted)
        return [Log.debug("transcript.agent", text=msg.text, interrupted=msg.interrupted)]

    def _on_reply_done(self, msg: agent.ReplyDone) -> list[Action]:
        self._current_reply = None
        if self._after_reply:
            actions, self._after_reply = self._after_reply, []
            if msg.status == "interrupted":  # the caller moved on: no keypad prompt
                done = self._on_reply_done_now(msg)  # marks the reply's tools cut off first
                return done + self._keypad.reply_interrupted(msg.reply_id)
            return actions + self._on_reply_done_now(msg)
        return self._on_reply_done_now(msg)

    def _on_reply_done_now(self, msg: agent.ReplyDone) -> list[Action]:
        if msg.status == "interrupted":
            # After a barge-in (its own INFO line) this is the same news: DEBUG then.
            log = Log.debug if msg.reply_id in self._fenced_replies else Log.info
            actions: list[Action] = [log("agent.reply_interrupted", reply_id=msg.reply_id)]
            if self.stream_sid is not None and self.state is State.LIVE:
                actions += self._barge_in.clear(self.stream_sid)
            self._ledger.reply_done(msg.reply_id, interrupted=True)
            self._hang_up_request.reply_interrupted(msg.reply_id)
            actions.extend(self._discard_results_of(msg.reply_id))
            actions += self._verb_mark_after(msg.reply_id)
            return actions + self._settled_replies()
        self._fenced_replies.discard(msg.reply_id)
        self._results.may_flow = True
        actions = self._flush_results()
        end_mark = self._ledger.reply_done(msg.reply_id, interrupted=False)
        if end_mark is not None and self.stream_sid is not None:
            actions.append(SendToTwilio(twilio.encode_mark(self.stream_sid, end_mark)))
        actions += self._settled_replies()
        if self._length.is_goodbye(msg.reply_id) and self.stream_sid:
            # Hang up once Twilio has played the goodbye, not when the agent finished sending it.
            actions.append(SendToTwilio(twilio.encode_mark(self.stream_sid, GOODBYE_MARK)))
        if self._hang_up_request.is_goodbye(msg.reply_id) and self.stream_sid:
            actions.append(SendToTwilio(twilio.encode_mark(self.stream_sid, HANG_UP_MARK)))
        return actions + self._verb_mark_after(msg.reply_id)

    def _on_reply_error(self, msg: agent.ReplyError) -> list[Action]:
        return [Log.warning("agent.reply_error", code=msg.code, message=msg.message[:300])]

    def _on_unknown_event(self, msg: agent.UnknownEvent) -> list[Action]:
        return [Log.debug("agent.unknown_event", type=msg.type)]

    def _on_invalid_event(self, msg: agent.InvalidEvent) -> list[Action]:
        self.invalid_agent_events += 1
        if _worth_a_line(self.invalid_agent_events):
            return [
                Log.warning(
                    "agent.invalid_event", reason=msg.reason, total=self.invalid_agent_events
                )
            ]
        return []

    # --- tools (the timing of their results: `tool_results`) --------------------------

    def _on_tool_call(self, msg: agent.ToolCall) -> list[Action]:
        if self.state is not State.LIVE:
            return [
                Log.warning("tool.call_ignored", tool_call_id=msg.call_id, state=self.state.value)
            ]
        if not self._results.called(msg, self._current_reply):
            return [Log.warning("tool.duplicate_call", tool_call_id=msg.call_id)]
        log = Log.debug("tool.called", tool_call_id=msg.call_id, name=msg.name)
        if msg.name in self._verbs.config.tool_names:
            return [log, *self._verb_tool_call(msg)]
        tool = self._tools.get(msg.name)
        if tool is None:
            return [
                log,
                *self._on_tool_finished(
                    ToolFinished(msg.call_id, f"unknown tool {msg.name!r}", True)
                ),
            ]
        if isinstance(tool, VerbTool):
            return [log, *self._verb_tool(msg.call_id, tool)]
        try:
            arguments = agent.tool_arguments(msg)
        except agent.ToolArgumentsError as exc:
            return [
                log,
                *self._on_tool_finished(
                    ToolFinished(msg.call_id, f"invalid arguments: {exc}", True)
                ),
            ]
        if tool.keypad_arguments:
            asking = self._keypad.run_tool(msg.call_id, tool, arguments, self._current_reply)
            return [log, *self._after_the_reply(asking)]
        return [log, RunTool(msg.call_id, tool, arguments)]

    def _on_tool_finished(self, msg: ToolFinished) -> list[Action]:
        held = self._results.finished(msg)
        if held is None:
            return [Log.warning("tool.result_for_unknown_call", tool_call_id=msg.call_id)]
        if not held:
            log, record = self._tool_done(msg, discarded=True)
            return [
                log,
                Log.info(
                    "tool.result_discarded", tool_call_id=msg.call_id, why="reply interrupted"
                ),
                record,
            ]
        log, record = self._tool_done(msg)
        if self._results.may_flow:
            return [log, record, *self._flush_results()]
        return [log, record]

    def _flush_results(self) -> list[Action]:
        if self.state is not State.LIVE or self._agent != "open" or not self._results.has_held():
            return []
        return [
            SendToAgent(agent.encode_tool_result(r.call_id, r.result, r.is_error))
            for r in self._results.take()
        ]

    def _discard_results_of(self, reply_id: str | None) -> list[Action]:
        return [
            Log.info("tool.result_discarded", tool_call_id=call_id, why="reply interrupted")
            for call_id in self._results.interrupted(reply_id)
        ]

    def _tool_done(self, msg: ToolFinished, *, discarded: bool = False) -> tuple[Log, Record]:
        """The tool call's one INFO line (`tool.called` is DEBUG: a call is worth one line,
        once its outcome is known) and its record."""
        name, arguments, duration_ms = self._results.outcome(msg.call_id)
        log = Log.info(
            "tool.finished",
            tool_call_id=msg.call_id,
            name=name,
            is_error=msg.is_error,
            duration_ms=duration_ms,
        )
        record = self._records.tool(
            tool_call_id=msg.call_id,
            name=name,
            arguments=arguments,
            result=msg.result,
            is_error=msg.is_error,
            duration_ms=duration_ms,
            discarded=discarded,
        )
        return log, record

    # --- timers: what each does when it fires ------------------------------------------

    def _on_timer(self, msg: TimerFired) -> list[Action]:
        handler = self._timer_handlers.get(msg.name)
        return [] if handler is None else handler(msg)

    def _retry_budget_spent(self, _: TimerFired) -> list[Action]:
        self._reconnect.budget_spent = True
        if self.end_reason is None and self.state in (
            State.RECONNECTING,
            State.RESUMING,
            State.CONFIGURING,
        ):
            return self._fail(self._gave_up_reason(), "gave up reconnecting to the agent")
        return []

    def _idle_check(self, msg: TimerFired) -> list[Action]:
        """Ends a stream that sent no audio for the idle period (`call_limits.IdleLimit`)."""
        seconds = self._idle.seconds
        if self.end_reason is not None or not seconds:
            return []
        if self._handover.waiting:  # no stream, no audio: the re-attach wait bounds this
            return [StartTimer(Timer.IDLE, seconds)]
        out = self._idle.check(seconds, self._clock(), self.frames_from_twilio, msg.media_at)
        if isinstance(out, StartTimer):
            return [out]
        return [Log.warning("twilio.idle", detail=out), *self._end(EndReason.TWILIO_IDLE, out)]

    def _call_length_reached(self, _: TimerFired) -> list[Action]:
        return self._wrap_up() if self.end_reason is None else []

    def _no_goodbye_in_time(self, _: TimerFired) -> list[Action]:
        if self.end_reason is None:
            return self._end(self._wrap_up_reason, "no goodbye in time")
        return []

    def _no_ready_in_time(self, _: TimerFired) -> list[Action]:
        if self.state in (State.CONFIGURING, State.RESUMING):
            # The server is stuck: try again on a new socket (within the retry budget).
            return [Log.warning("agent.no_ready_in_time"), *self._close_agent()]
        return []

    def _no_session_ended_in_time(self, _: TimerFired) -> list[Action]:
        if self._agent == "open":
            return [Log.warning("agent.no_session_ended"), *self._close_agent()]
        return []

    def _apology_played(self, _: TimerFired) -> list[Action]:
        return self._hang_up() if self.state is State.APOLOGIZING else []

    # --- the call verbs (`hang_up`, `keypad`, `silence`) -------------------------------

    @property
    def transfer_targets(self) -> tuple[str, ...]:
        """The names of the bot's transfer targets (empty: it transfers nowhere)."""
        transfer = self._verbs.config.transfer
        return tuple(t.name for t in transfer.targets) if transfer is not None else ()

    @property
    def transferring(self) -> bool:
        """A transfer is under way: announced, being redirected or ringing the person."""
        verbs = self._verbs
        return verbs.target is not None and verbs.phase in _TRANSFER_PHASES

    def live_refusal(self) -> str | None:
        """Why a verb cannot be performed on this call now (None: it can)."""
        if self.end_reason is not None or self.state in (State.ENDING, State.DONE):
            return "the call is ending"
        if self.state is not State.LIVE:
            return "the call is not live yet"
        return None

    def _verb_tool(self, call_id: str, tool: VerbTool) -> list[Action]:
        if tool.verb != "hang-up":
            result = ToolFinished(call_id, f"{tool.name} is not available on this call", True)
            return self._on_tool_finished(result)
        # The result first: the agent answers it with its goodbye.
        finished = self._on_tool_finished(ToolFinished(call_id, '"hanging up"', False))
        return finished + self._request_hang_up("agent", None)

    def _request_hang_up(self, by: HangUpBy, instructions: str | None) -> list[Action]:
        if self._hang_up_request.requested or self.end_reason is not None:
            return [Log.info("call.hang_up_pending", by=by)]
        return [
            *self._silence.disarm(),
            *self._keypad.cancel(),
            *self._hang_up_request.request(by, self._current_reply, instructions),
        ]

    def _hang_up_record(self, outcome: str) -> Record:
        by = self._hang_up_request.by or "operator"
        return self._records.action("hang-up", outcome, by=by)

    def _hung_up_reason(self) -> EndReason:
        return _HUNG_UP_BY[self._hang_up_request.by or "operator"]

    def _on_hang_up_requested(self, msg: HangUpRequested) -> list[Action]:
        by: HangUpBy = "agent" if msg.by == "agent" else "operator"  # a tool, or anyone else
        refusal = self.live_refusal()
        if msg.goodbye and refusal is None and self._agent == "open":
            return self._request_hang_up(by, say_instructions(msg.goodbye))
        if self.end_reason is not None:
            return []
        return [
            Log.info("call.hanging_up", by=by),
            self._records.action("hang-up", "at-once", by=by),
            *self._end(_HUNG_UP_BY[by]),
        ]

    def _on_say_requested(self, msg: SayRequested) -> list[Action]:
        refusal = self.live_refusal()
        if refusal is not None or self._agent != "open":
            why = refusal or "the agent is reconnecting"
            return [
                Log.warning("call.say_refused", why=why),
                self._records.action("say", "refused", by="operator", detail=why),
            ]
        return [
            Log.info("call.say", chars=len(msg.text)),
            self._records.action("say", "sent", by="operator"),
            *self._silence.disarm(),
            SendToAgent(agent.encode_reply_create(say_instructions(msg.text))),
        ]

    def _no_hang_up_goodbye_in_time(self, _: TimerFired) -> list[Action]:
        if self.end_reason is not None:
            return []
        return [
            Log.warning(
                "call.goodbye_not_played", within_seconds=self._hang_up_request.wait_seconds
            ),
            self._hang_up_record("goodbye-not-played"),
            *self._end(self._hung_up_reason(), "no goodbye played in time"),
        ]

    def _after_the_reply(self, actions: list[Action]) -> list[Action]:
        """The frames for the agent among `actions` wait for the reply under way (the one
        that called a keypad tool) to be done: a `reply.create` while a reply plays
        would replace it."""
        if self._current_reply is None:
            return actions
        self._after_reply += [a for a in actions if isinstance(a, SendToAgent)]
        return [a for a in actions if not isinstance(a, SendToAgent)]

    def _keypad_timed_out(self, _: TimerFired) -> list[Action]:
        if self.end_reason is not None:
            return []
        if self.state is not State.LIVE:  # reconnecting: judged once the agent is back
            return [StartTimer(Timer.KEYPAD, 1.0)]
        return self._keypad.timed_out()

    def _keypad_tool_failed(self, call_id: str, problem: str) -> list[Action]:
        return self._on_tool_finished(ToolFinished(call_id, problem, True))

    def _may_wait_for_the_caller(self) -> bool:
        """Whether the silence rule's wait may start: the agent's replies have played,
        and nothing else is going on that the caller waits for."""
        return (
            self.state is State.LIVE
            and self.end_reason is None
            and not self._caller_speaking
            and not self._hang_up_request.requested
            and not self._length.wrapping_up
            and not self._results.outstanding
            and not self._keypad.busy
            and self._ledger.played_out()
        )

    def _silence_waited(self, _: TimerFired) -> list[Action]:
        if self.state is not State.LIVE or self.end_reason is not None or self._handover.waiting:
            return self._silence.disarm()  # it waits again once a reply has played
        actions, hang_up = self._silence.waited()
        if hang_up:
            return actions + self._request_hang_up("silence", SAY_GOODBYE_INSTRUCTIONS)
        detail = f"check-in {self._silence.check_ins}"
        check_in = self._records.action("silence-check-in", "asked", by="silence", detail=detail)
        return [*actions, check_in]

    # --- ending -----------------------------------------------------------------------

    def _wrap_up(self, reason: EndReason = EndReason.MAX_DURATION) -> list[Action]:
        """The agent says goodbye, then we hang up (maximum length reached, or shutting down)."""
        if self._length.wrapping_up:
            return []
        if self.state is not State.LIVE or self._agent != "open":
            return self._end(reason)
        self._wrap_up_reason = reason
        return self._length.wrap_up(reason.value, shutdown=reason is EndReason.SERVER_SHUTDOWN)

    def _on_server_shutdown(self, msg: ServerShutdown) -> list[Action]:
        log = Log.info("call.server_shutdown", polite=msg.polite)
        if msg.polite and self.end_reason is None:
            return [log, *self._wrap_up(EndReason.SERVER_SHUTDOWN)]
        return [log, *self._end(EndReason.SERVER_SHUTDOWN)]

    def _end(self, reason: EndReason, detail: str = "") -> list[Action]:
        """An orderly end: tell the agent (billing stops at session.end), close both sides."""
        if self.end_reason is not None:
            return self._finish_if_closed()
        self.end_reason = reason
        self.end_detail = detail
        self.state = State.ENDING
        actions: list[Action] = [CancelTimer(Timer.READY)]
        if self._agent == "open":
            actions += [
                SendToAgent(agent.SESSION_END),
                StartTimer(Timer.SESSION_END, self._end_wait),
            ]
        actions += self._hang_up(1008 if reason is EndReason.TWILIO_PROTOCOL_ERROR else 1000)
        return actions + self._finish_if_closed()

    def _fail(self, reason: EndReason, detail: str) -> list[Action]:
        """The agent side cannot go on: apologise to the caller, then hang up."""
        if self.end_reason is not None:
            return self._finish_if_closed()
        self.end_reason = reason
        self.end_detail = detail
        actions: list[Action] = [
            Log.error("call.failed", reason=reason.value, detail=detail),
            self._records.error("bridge", reason.value, detail),
            CancelTimer(Timer.READY),
        ]
        if self._agent == "open":
            actions += [SendToAgent(agent.SESSION_END), *self._close_agent()]
        if self._twilio_open and self.stream_sid is not None and self._apology:
            self.state = State.APOLOGIZING
            sid = self.stream_sid
            actions += self._barge_in.clear(sid)  # whatever the agent was saying stops first
            actions += [SendToTwilio(twilio.encode_media(sid, p)) for p in self._apology]
            actions += [
                SendToTwilio(twilio.encode_mark(sid, APOLOGY_MARK)),
                StartTimer(Timer.APOLOGY, self._apology_seconds + 3.0),
            ]
            return actions
        self.state = State.ENDING
        return actions + self._hang_up() + self._finish_if_closed()

    def _close_agent(self) -> list[Action]:
        if self._agent in ("open", "opening"):
            return [CloseAgent()]
        return []

    def _hang_up(self, code: int = 1000) -> list[Action]:
        return [HangUp(code)] if self._twilio_open else []

    def _finish_if_closed(self) -> list[Action]:
        if self.state is State.DONE or self._twilio_open or self._agent in ("open", "opening"):
            return []
        self.state = State.DONE
        reason = self.end_reason.value if self.end_reason else "unknown"
        closed = self._records.closed(
            ended_by=_ENDED_BY.get(self.end_reason, "bridge") if self.end_reason else "bridge",
            reason=reason,
            frames_from_twilio=self.frames_from_twilio,
            frames_to_agent=self.frames_to_agent,
            frames_to_twilio=self.frames_to_twilio,
            dropped=dict(self.dropped),
            resumes=self.resumes,
        )
        return [
            *(CancelTimer(t) for t in _CANCELLED_AT_THE_END),
            *self._settled_replies(everything=True),
            closed,
            Finished(reason),
        ]

    # --- a call outlives its streams (`reattach`) --------------------------------------

    @property
    def awaiting_stream(self) -> bool:
        """Whether a new stream for this call joins it: a redirect of ours ended (or will
        end) the current one, and the call goes on."""
        return self.end_reason is None and self._handover.expected is not None

    def _stream_handed_over(self) -> list[Action]:
        """The stream ended for a verb of ours: keep the agent session, wait for the next."""
        if self.stream_sid is not None:
            self._ledger.cleared()  # whatever Twilio still held of ours is gone with it
        self.stream_sid = None
        wait = REATTACH_SECONDS
        phase = self._verbs.phase
        if phase in (Phase.REDIRECTING, Phase.DIALING) and self._verbs.config.transfer:
            wait = self._verbs.config.transfer.ring_seconds + DIAL_SLACK_SECONDS
        elif phase is Phase.SENDING_DIGITS:
            wait = DIGITS_WAIT_SECONDS
        elif self._handover.expected == STREAM_LOST:
            wait = self._stream_lost_seconds
        return self._handover.stream_ended(wait) or []

    @property
    def twilio_runs_next_verb(self) -> bool:
        """Whether Twilio runs the TwiML after the last stream's `</Connect>`: it started
        and ended without `stop` (closed by us, or broken)."""
        return self._handover.streams > 0 and not self._stop_received

    def _reattached(self, msg: twilio.Start) -> list[Action]:
        self._stop_received = False
        info = msg.start
        self.stream_sid = info.stream_sid or msg.stream_sid
        self._twilio_open = True
        _, why, actions = self._handover.stream_started()
        actions += [
            Log.info(
                "stream.reattached",
                stream_sid=self.stream_sid,
                why=why,
                streams=self._handover.streams,
                session_id=self.session_id,
            ),
            *self._idle.start(self._clock()),
        ]
        if why == "digits":
            return actions + self._digits_done(None)
        if why == STREAM_LOST:
            return [*actions, self._stream_lost_record("reattached")]
        if why == "transfer-failed" and self._verbs.target is not None:
            self._verbs.finish()
            why_failed = DIAL_FAILURES.get(self._verbs.transfer_outcome or "", "no answer")
            text = TRANSFER_FAILED_INSTRUCTIONS.format(name=self._verbs.target.name, why=why_failed)
            actions += self._tell_agent(text)
        return actions

    def _on_call_completed(self, _: CallCompleted) -> list[Action]:
        """The caller hung up while the call had no stream (ringing a transfer, say)."""
        if self.end_reason is not None or not self._handover.waiting:
            return []
        dialing = self._verbs.phase in (Phase.REDIRECTING, Phase.DIALING)
        outcome = [self._transfer_record("canceled")] if dialing else []
        if self._handover.expected == STREAM_LOST:
            outcome = [self._stream_lost_record("call-ended")]
        return [*outcome, *self._end(EndReason.STREAM_STOPPED, "the call ended between streams")]

    def _no_stream_in_time(self, _: TimerFired) -> list[Action]:
        if self.end_reason is not None or not self._handover.waiting:
            return []
        if self._verbs.phase is Phase.SENDING_DIGITS:
            self._verbs.finish()
        if self._handover.expected == STREAM_LOST:
            return [
                self._stream_lost_record("not-back"),
                *self._end(EndReason.TWILIO_DISCONNECTED, "the stream broke; no new one came"),
            ]
        return self._end(EndReason.NO_NEW_STREAM, "no new stream for the call in time")

    def _stream_lost_record(self, outcome: str) -> Record:
        """How a stream that broke came out: reattached, not-back, call-ended."""
        return self._records.action(STREAM_LOST, outcome, started_at=self._stream_lost_at)

    # --- verbs on the call: transfer, digits, voicemail (`call_verbs`) ------------------

    def verb_refusal(self, verb: str, argument: object) -> str | None:
        """Why this verb cannot be done now (None: it can), for the API to answer with."""
        if self.end_reason is not None:
            return CALL_ENDED
        if self.state is not State.LIVE or self.stream_sid is None or self._agent != "open":
            return f"the call is not live ({self.state.value})"
        if verb == "transfer":
            return self._verbs.transfer_refusal(argument)
        return self._verbs.digits_refusal(argument)

    def _verb_tool_call(self, msg: agent.ToolCall) -> list[Action]:
        try:
            arguments = agent.tool_arguments(msg)
        except agent.ToolArgumentsError as exc:
            return self._on_tool_finished(
                ToolFinished(msg.call_id, f"invalid arguments: {exc}", True)
            )
        if msg.name == TRANSFER_TOOL:
            verb, argument = "transfer", arguments.get("target")
        else:
            assert msg.name == DIGITS_TOOL
            verb, argument = "digits", arguments.get("digits")
        refusal = self.verb_refusal(verb, argument)
        if refusal is not None:
            return self._on_tool_finished(ToolFinished(msg.call_id, refusal, True))
        assert isinstance(argument, str)
        if verb == "transfer":
            return self._start_transfer(argument, msg.call_id)
        return self._start_digits(argument, msg.call_id)

    def _on_transfer_requested(self, msg: TransferRequested) -> list[Action]:
        refusal = self.verb_refusal("transfer", msg.target)
        if refusal is not None:
            return [Log.warning("transfer.refused", why=refusal)]
        return self._start_transfer(msg.target, None)

    def _on_digits_requested(self, msg: DigitsRequested) -> list[Action]:
        refusal = self.verb_refusal("digits", msg.digits)
        if refusal is not None:
            return [Log.warning("digits.refused", why=refusal)]
        return self._start_digits(msg.digits, None)

    def _start_transfer(self, name: str, tool_call_id: str | None) -> list[Action]:
        """The agent tells the caller first; the dial follows once that has played."""
        target = self._verbs.begin_transfer(name, tool_call_id, self._records.now())
        announce = ANNOUNCE_INSTRUCTIONS.format(name=target.name)
        actions: list[Action] = [
            Log.info("transfer.announcing", target=target.name),
            StartTimer(Timer.VERB, ANNOUNCE_SECONDS),
        ]
        if tool_call_id is not None:
            result = tool_result(status="transferring", target=target.name, say=announce)
            return actions + self._on_tool_finished(ToolFinished(tool_call_id, result, False))
        return actions + self._tell_agent(announce)

    def _start_digits(self, digits: str, tool_call_id: str | None) -> list[Action]:
        self._verbs.begin_digits(digits, tool_call_id)
        self._handover.expect("digits")
        # The digits themselves stay out of the logs: a menu may ask for an account number.
        log = Log.info("digits.sending", count=len(digits))
        return [log, RedirectCall("digits", digits=digits)]

    def _verb_mark_after(self, reply_id: str | None) -> list[Action]:
        """After the reply a verb waits for, a mark: its echo says the reply was played."""
        if not self._verbs.is_awaited(reply_id):
            return []
        if self.stream_sid is None:
            return self._verb_ready()
        return [SendToTwilio(twilio.encode_mark(self.stream_sid, VERB_MARK))]

    def _verb_ready(self, _: TimerFired | None = None) -> list[Action]:
        """What the caller had to hear has played (or the wait ran out): act."""
        if self.end_reason is not None:
            return []
        phase = self._verbs.ready()
        if phase is Phase.ANNOUNCING and self._verbs.target is not None:
            self._verbs.phase = Phase.REDIRECTING
            self._handover.expect("transfer")
            target = self._verbs.target
            return [
                CancelTimer(Timer.VERB),
                Log.info("transfer.dialing", target=target.name),
                RedirectCall("transfer", to=target.to),
            ]
        if phase is Phase.LEAVING_MESSAGE:
            return [CancelTimer(Timer.VERB), *self._hang_up_after_message()]
        return []

    def _on_redirect_finished(self, msg: RedirectFinished) -> list[Action]:
        if msg.error is None:
            if msg.verb == "transfer" and self._verbs.phase is Phase.REDIRECTING:
                self._verbs.phase = Phase.DIALING
            return [Log.debug("call.redirected", verb=msg.verb)]
        self._handover.expect(None)
        actions: list[Action] = [Log.error("call.redirect_failed", verb=msg.verb, error=msg.error)]
        if self.end_reason is not None:
            return actions
        if msg.verb == "digits":
            return actions + self._digits_done(msg.error)
        target = self._verbs.target
        self._verbs.transfer_outcome = "not-started"
        actions.append(self._transfer_record("not-started"))
        self._verbs.finish()  # a tool call was answered when the announcement began
        if target is not None:
            actions += self._tell_agent(TRANSFER_NOT_STARTED_INSTRUCTIONS.format(name=target.name))
        return actions

    def _on_dial_ended(self, msg: DialEnded) -> list[Action]:
        """The transfer's dial is over: answered (the call is the person's now) or not
        (the caller comes back to the agent on a new stream)."""
        if self.end_reason is not None or self._verbs.target is None:
            return []
        name = self._verbs.target.name
        self._verbs.transfer_outcome = msg.status
        if msg.status in DIAL_ANSWERED:
            return self._transfer_done()
        self._verbs.phase = Phase.BACK
        self._handover.expect("transfer-failed")
        return [
            Log.info("transfer.failed", target=name, dial_status=msg.status),
            self._transfer_record(msg.status),
            *self._handover.wait_longer(REATTACH_SECONDS),
        ]

    def _on_transfer_answered(self, _: TransferAnswered) -> list[Action]:
        if self.end_reason is not None or self._verbs.target is None:
            return []
        self._verbs.transfer_outcome = "answered"
        return self._transfer_done()

    def _transfer_done(self) -> list[Action]:
        """The person has the caller: end the agent session now (it is billed while open)."""
        assert self._verbs.target is not None
        log = Log.info("transfer.answered", target=self._verbs.target.name)
        record = self._transfer_record("answered")
        self._verbs.finish()
        self._handover.expect(None)
        return [log, record, *self._end(EndReason.TRANSFERRED)]

    def _digits_done(self, error: str | None) -> list[Action]:
        call_id = self._verbs.finish()
        self._handover.expect(None)
        outcome = "sent" if error is None else "failed"
        record = self._records.action("digits", outcome, by=self._verbs.by)
        if call_id is None:
            return [record]
        result = tool_result(sent=True) if error is None else "the keys could not be sent"
        return [record, *self._on_tool_finished(ToolFinished(call_id, result, error is not None))]

    def _on_amd_verdict(self, msg: AmdVerdict) -> list[Action]:
        """Who answered an outbound call, by Twilio's answering-machine detection."""
        verdict = msg.answered_by
        self._verbs.answered_by = verdict
        log = Log.info("call.answered_by", answered_by=verdict)
        record = self._records.action("amd", verdict)
        if self.end_reason is not None:
            return [log, record]
        if verdict == "fax":
            return [log, record, *self._end(EndReason.FAX)]
        if verdict not in MESSAGE_END:
            return [log, record]  # a person, unknown, or a machine still greeting: carry on
        voicemail = self._verbs.config.voicemail
        if voicemail is None:
            return [log, record, *self._end(EndReason.ANSWERING_MACHINE)]
        if self._verbs.busy:
            skipped = Log.warning("voicemail.skipped", why="another action is under way")
            return [log, record, skipped]
        greeting_due = self._verbs.replies_started == 0 and "greeting" in self._session_config
        if self.state is not State.LIVE or (greeting_due and self._current_reply is None):
            # Not live yet, or the greeting not begun: the message replaces the first reply.
            self._verbs.message_pending = True
            return [log, record]
        return [log, record, *self._leave_message()]

    def _leave_message(self) -> list[Action]:
        """Stop what the agent says to the machine; have it say the voicemail message."""
        voicemail = self._verbs.config.voicemail
        self._verbs.message_pending = False
        if voicemail is None or self.stream_sid is None:
            return []
        actions: list[Action] = []
        # Whatever the agent was saying to the machine stops; the message is said anew.
        if self._current_reply is not None:
            self._fenced_replies.add(self._current_reply)
            self._current_reply = None
        actions += self._barge_in.clear(self.stream_sid)
        self._verbs.begin_message()
        message = voicemail.text_for(self.custom_parameters)
        actions += [
            Log.info("voicemail.leaving_message"),
            StartTimer(Timer.VERB, MESSAGE_SECONDS),
            *self._tell_agent(VOICEMAIL_INSTRUCTIONS.format(message=message)),
        ]
        return actions

    def _hang_up_after_message(self) -> list[Action]:
        """The voicemail message has played: end the call (the session, then the line)."""
        self._verbs.finish()
        return [self._records.action("voicemail", "left"), *self._end(EndReason.VOICEMAIL_LEFT)]

    def _transfer_record(self, outcome: str) -> Record:
        target = self._verbs.target
        return self._records.action(
            "transfer",
            outcome,
            by=self._verbs.by,
            target=target.name if target else None,
            started_at=self._verbs.started_at,
        )

    def _tell_agent(self, instructions: str) -> list[Action]:
        if self._agent != "open":
            return []
        return [SendToAgent(agent.encode_reply_create(instructions))]

    # --- the call's record ------------------------------------------------------------

    def _settled_replies(self, *, everything: bool = False) -> list[Action]:
        actions: list[Action] = []
        for reply in self._ledger.settled(everything=everything):
            actions.extend(self._records.reply(reply))
        if self._silence.may_arm and self._may_wait_for_the_caller():
            actions += self._silence.played_out()
        return actions

    def _ignore(self, _: object) -> list[Action]:
        return []
