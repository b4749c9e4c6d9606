# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The audio fast path, compiled: caller audio and agent audio relayed inside picows's
frame callbacks at C level, while the call's bridge says they may be.

Only the common frame is taken here (a whole text frame that decodes to audio the route
covers); anything else goes to the socket's `_on_frame`, the full path, which decodes it
again. The bridge decides every route (see `CallBridge.audio_route`); this only counts
what it relayed, and the runner hands the counts back to the bridge before the bridge
handles anything. `__init__.py` explains when this module is used.
"""

from picows.picows cimport WSFrame, WSListener, WSMsgType, WSTransport

cdef extern from *:
    const char* CALLBRIDGE_PICOWS_VERSION  # set by setup.py

BUILT_AGAINST_PICOWS = CALLBRIDGE_PICOWS_VERSION.decode()


cdef class AudioSocket(WSListener):
    """What both audio sockets share: a transport that sends may go straight to."""

    # The socket's own transport while a frame may be sent on it without checks (open,
    # keeping up, not given up); None otherwise. The socket sets it with its state.
    # Typed object, checked per frame: only picows's own transport is sent to from here.
    cdef public object direct
    # We ended the socket: frames still in the read buffer are ignored (by `_on_frame`).
    cdef public bint stopped

    def __init__(self):
        self.direct = None
        self.stopped = False

    def _on_frame(self, transport, frame):
        raise NotImplementedError


cdef class TwilioAudioSocket(AudioSocket):
    """Caller audio (Twilio `media`) to the agent (`input.audio`)."""

    cdef AudioSocket _agent  # where caller audio goes while the route is open; else None
    cdef public double media_due
    cdef public long long relayed_frames
    cdef object _decode
    cdef object _media_type
    cdef object _encode
    cdef object _clock
    cdef double _frame_seconds
    cdef double _slack_seconds

    def __init__(self):
        AudioSocket.__init__(self)
        self._agent = None
        self.media_due = float("-inf")
        self.relayed_frames = 0

    def configure_fast_path(self, decode, media_type, encode, clock,
                            double frame_seconds, double slack_seconds):
        """The runner's decoder, encoder and pacing (its GCRA: see `CallRunner`)."""
        self._decode = decode
        self._media_type = media_type
        self._encode = encode
        self._clock = clock
        self._frame_seconds = frame_seconds
        self._slack_seconds = slack_seconds

    def take_relayed(self):
        """The frames relayed here since the last call."""
        cdef long long frames = self.relayed_frames
        self.relayed_frames = 0
        return frames

    def route_to(self, AudioSocket agent):
        """Relay caller audio to this socket from now on; None: not here, the full path."""
        self._agent = agent

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef AudioSocket agent = self._agent
        cdef WSTransport out
        cdef double now, due
        if agent is not None and not self.stopped and frame.msg_type == WSMsgType.TEXT and frame.fin:
            if isinstance(agent.direct, WSTransport):
                out = <WSTransport>agent.direct
                try:
                    message = self._decode(frame.get_payload_as_memoryview())
                except Exception:
                    message = None
                if type(message) is self._media_type:
                    payload = message.media.payload
                    if payload:
                        now = self._clock()
                        due = self.media_due
                        if due < now:
                            due = now
                        # Too far ahead of real time: the full path refuses, counts, logs.
                        if due - now <= self._slack_seconds:
                            self.media_due = due + self._frame_seconds
                            self.relayed_frames += 1
                            out.send(WSMsgType.TEXT, self._encode(payload))
                            return
        self._on_frame(transport, frame)


cdef class AgentAudioSocket(AudioSocket):
    """Agent audio (`reply.audio`) to the caller (Twilio `media`), between two marks."""

    cdef AudioSocket _twilio  # where the reply's audio goes while the route is open
    cdef object _reply_id
    cdef object _stream_sid
    cdef Py_ssize_t _budget  # bytes that may go before a mark is due
    cdef public long long relayed_frames
    cdef public long long relayed_bytes
    cdef object _decode
    cdef object _audio_type
    cdef object _encode

    def __init__(self):
        AudioSocket.__init__(self)
        self._twilio = None
        self.relayed_frames = 0
        self.relayed_bytes = 0

    def configure_fast_path(self, decode, audio_type, encode):
        self._decode = decode
        self._audio_type = audio_type
        self._encode = encode

    def take_relayed(self):
        """(frames, bytes) relayed here since the last call."""
        out = (self.relayed_frames, self.relayed_bytes)
        self.relayed_frames = 0
        self.relayed_bytes = 0
        return out

    def route_to(self, AudioSocket twilio, stream_sid, reply_id, Py_ssize_t budget):
        """Relay the audio of reply `reply_id` to this socket, up to `budget` bytes; a
        `twilio` of None closes the route."""
        self._twilio = twilio
        self._stream_sid = stream_sid
        self._reply_id = reply_id
        self._budget = budget

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef AudioSocket twilio = self._twilio
        cdef WSTransport out
        cdef Py_ssize_t size
        if twilio is not None and not self.stopped and frame.msg_type == WSMsgType.TEXT and frame.fin:
            if isinstance(twilio.direct, WSTransport):
                out = <WSTransport>twilio.direct
                try:
                    event = self._decode(frame.get_payload_as_memoryview())
                except Exception:
                    event = None
                if type(event) is self._audio_type and event.reply_id == self._reply_id:
                    data = event.data
                    size = len(data)
                    if 0 < size < self._budget:
                        self._budget -= size
                        self.relayed_frames += 1
                        self.relayed_bytes += size
                        out.send(WSMsgType.TEXT, self._encode(self._stream_sid, data))
                        return
        self._on_frame(transport, frame)
