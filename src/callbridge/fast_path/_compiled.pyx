# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The audio fast path, compiled: caller audio and agent audio relayed inside picows's
frame callbacks at C level, while the call's bridge says they may be.

Only the common frame is taken here (a whole text frame that decodes to audio the route
covers); anything else takes the socket's full path: the agent's events as decoded here
(`_deliver`), Twilio's frames as received (`_on_frame`; the runner decodes them, so a
mark echo is decoded twice, the one cost of keeping the Twilio socket's interface text).
The bridge decides every route (see `CallBridge.audio_route`); this only counts what it
relayed, and the runner hands the counts back to the bridge before the bridge handles
anything. `__init__.py` explains when this module is used.
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
    cdef object _decode  # a whole text frame to a message (raises if it is not one)
    cdef object _encode  # a message struct to the other side's frame

    def __init__(self):
        self.direct = None
        self.stopped = False

    def _on_frame(self, transport, frame):
        raise NotImplementedError

    cdef inline object _message(self, AudioSocket peer, WSFrame frame):
        """The decoded message of a whole text frame while `peer` (the other side) may be
        sent to at once; else None, and the frame takes the full path."""
        if peer is None or self.stopped or frame.msg_type != WSMsgType.TEXT or not frame.fin:
            return None
        if not isinstance(peer.direct, WSTransport):
            return None
        try:
            return self._decode(frame.get_payload_as_memoryview())
        except Exception:  # the full path decodes it again and says what is wrong
            return None


cdef class TwilioAudioSocket(AudioSocket):
    """Caller audio (Twilio `media`) to the agent (`input.audio`)."""

    cdef AudioSocket _agent  # where caller audio goes while the route is open; else None
    cdef public double media_due
    cdef long long relayed_frames
    cdef object _media_type
    cdef object _input_audio
    cdef object _clock
    cdef double _frame_seconds
    cdef double _slack_seconds

    def __init__(self):
        AudioSocket.__init__(self)
        self._agent = None
        self.media_due = float("-inf")
        self.relayed_frames = 0

    def configure_fast_path(self, decode, media_type, input_audio, encode, clock,
                            double frame_seconds, double slack_seconds):
        """How to read Twilio's frames (`decode` to `media_type`), write the agent's
        (`encode(input_audio(payload))`), and pace them (the runner's GCRA, its clock)."""
        self._decode = decode
        self._media_type = media_type
        self._input_audio = input_audio
        self._encode = encode
        self._clock = clock
        self._frame_seconds = frame_seconds
        self._slack_seconds = slack_seconds

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef AudioSocket agent = self._agent
        cdef double now, due
        message = self._message(agent, frame)
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
                    (<WSTransport>agent.direct).send(
                        WSMsgType.TEXT, self._encode(self._input_audio(payload))
                    )
                    return
        self._on_frame(transport, frame)


cdef class AgentAudioSocket(AudioSocket):
    """Agent audio (`reply.audio`) to the caller (Twilio `media`), between two marks."""

    cdef AudioSocket _twilio  # where the reply's audio goes while the route is open
    cdef object _reply_id
    cdef object _stream_sid
    cdef Py_ssize_t _budget  # bytes that may go before a mark is due
    cdef long long relayed_frames
    cdef long long relayed_bytes
    cdef object _audio_type
    cdef object _media
    cdef object _payload

    def __init__(self):
        AudioSocket.__init__(self)
        self._twilio = None
        self.relayed_frames = 0
        self.relayed_bytes = 0

    def configure_fast_path(self, decode, audio_type, media, payload, encode):
        """How to read the agent's frames (`decode` to `audio_type`) and write Twilio's
        (`encode(media(stream_sid, payload(audio)))`)."""
        self._decode = decode
        self._audio_type = audio_type
        self._media = media
        self._payload = payload
        self._encode = encode

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef AudioSocket twilio = self._twilio
        cdef Py_ssize_t size
        event = self._message(twilio, frame)
        if event is None:
            self._on_frame(transport, frame)
            return
        if type(event) is self._audio_type and event.reply_id == self._reply_id:
            data = event.data
            size = len(data)
            if 0 < size < self._budget:
                self._budget -= size
                self.relayed_frames += 1
                self.relayed_bytes += size
                media = self._media(self._stream_sid, self._payload(data))
                (<WSTransport>twilio.direct).send(WSMsgType.TEXT, self._encode(media))
                return
        self._deliver(event)  # decoded already: the full path from there on

    def _deliver(self, event):
        raise NotImplementedError


# --- what the runner does with a call's two sockets (one call each, not one a socket) ---

def take_relayed(TwilioAudioSocket twilio, AgentAudioSocket agent):
    """(caller frames, agent frames, agent bytes) relayed since the last call; None if
    nothing was."""
    if twilio.relayed_frames == 0 and agent.relayed_frames == 0:
        return None
    out = (twilio.relayed_frames, agent.relayed_frames, agent.relayed_bytes)
    twilio.relayed_frames = agent.relayed_frames = agent.relayed_bytes = 0
    return out


def set_routes(TwilioAudioSocket twilio, AgentAudioSocket agent, route):
    """Set the bridge's `AudioRoute`: (caller audio to the agent?, stream sid or None,
    reply id, bytes before the next mark)."""
    to_agent, stream_sid, reply_id, budget = route
    twilio._agent = agent if to_agent else None
    if stream_sid is None:
        agent._twilio = None
    else:
        agent._twilio = twilio
        agent._stream_sid = stream_sid
        agent._reply_id = reply_id
        agent._budget = budget


def end_routes(TwilioAudioSocket twilio, AgentAudioSocket agent):
    """No route either way (and no reference from one socket to the other)."""
    twilio._agent = None
    agent._twilio = None
