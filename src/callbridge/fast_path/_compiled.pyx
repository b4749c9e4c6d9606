# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The audio fast path, compiled: caller audio and agent audio relayed inside picows's
frame callbacks at C level, while the call's bridge says they may be.

Only the common frames are taken here (a whole text frame that decodes to audio the route
covers, with the mark due after it; Twilio's echo of a mark sent mid-reply); anything else
takes the socket's full path: the agent's events as decoded here (`_deliver`), Twilio's
frames and unrelayed agent audio as received (`_on_frame`, which decodes them again).
The bridge decides every route (see `CallBridge.audio_route`); this only counts what it
relayed and holds back the echoes, and the runner hands both to the bridge before the
bridge handles anything. `__init__.py` explains when this module is used.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.pythread cimport PyThread_get_thread_ident
from libc.stdint cimport uint8_t
from libc.string cimport memcpy
from picows.picows cimport WSFrame, WSListener, WSMsgType, WSTransport

cdef extern from *:
    const char* CALLBRIDGE_PICOWS_VERSION  # set by setup.py

BUILT_AGAINST_PICOWS = CALLBRIDGE_PICOWS_VERSION.decode()


# --- base64 audio, relayed as the text it arrived in ----------------------------------
# Audio is relayed without decoding its base64 and encoding it again, the costliest part
# of relaying a frame otherwise: the text is checked here and copied out as is. Only
# canonical base64 passes, text that decoding and encoding again gives back unchanged,
# so a relayed frame is byte for byte the one the full path would send; anything else
# (other padding, stray bits, escapes, whitespace) takes the full path, which decodes it.

cdef unsigned char _SEXTET[256]  # the value of each base64 character; 64: not one


# Audibility of μ-law audio, as `playout_ledger.is_audible` judges it: every third byte
# sampled, loud unless bits 5 and 6 are both set. Every third byte is the first of a group
# of four base64 characters, and those two bits are bits 3 and 4 of the first character's
# sextet: one table look-up a sample, no decoding.
cdef unsigned char _LOUD_LEAD[256]  # 1: a group starting with this character is loud


cdef void _fill_sextets():
    cdef bytes alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    cdef int i
    for i in range(256):
        _SEXTET[i] = 64
        _LOUD_LEAD[i] = 0
    for i in range(64):
        _SEXTET[<unsigned char>alphabet[i]] = i
        _LOUD_LEAD[<unsigned char>alphabet[i]] = (i & 0x18) != 0x18


_fill_sextets()


cdef bint _audible(const unsigned char* text, Py_ssize_t n, Py_ssize_t share) noexcept nogil:
    """Whether the audio of a JSON string of canonical base64 (`text[:n]`, quotes
    included; see `_base64_size`) is audible: at least one in `share` of its groups'
    first bytes loud. Stops at the first group that settles it."""
    cdef Py_ssize_t groups = (n - 2) >> 2, i, loud = 0
    cdef Py_ssize_t needed = (groups + share - 1) // share
    text += 1
    for i in range(groups):
        loud += _LOUD_LEAD[text[i << 2]]
        if loud >= needed:
            return True
    return False


def audible(raw, Py_ssize_t share):
    """`_audible` of a `msgspec.Raw` of canonical base64, for the tests."""
    cdef Py_buffer view
    PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE)
    try:
        return _audible(<const unsigned char*>view.buf, view.len, share)
    finally:
        PyBuffer_Release(&view)


cdef Py_ssize_t _base64_size(const unsigned char* text, Py_ssize_t n) noexcept nogil:
    """The bytes a JSON string (`text[:n]`, quotes included) decodes to, if it is
    canonical, padded base64 of at least one byte; else -1."""
    cdef Py_ssize_t size = n - 2, i
    cdef unsigned char seen = 0
    if size <= 0 or size & 3 or text[0] != 34 or text[n - 1] != 34:  # 34: '"'
        return -1
    text += 1
    for i in range(size - 2):
        seen |= _SEXTET[text[i]]
    if seen & 64:
        return -1
    if text[size - 1] != 61:  # 61: '='
        if (_SEXTET[text[size - 2]] | _SEXTET[text[size - 1]]) & 64:
            return -1
        return size // 4 * 3
    if text[size - 2] == 61:  # two of padding: the last character's low 4 bits unused
        return -1 if _SEXTET[text[size - 3]] & 15 else size // 4 * 3 - 2
    if _SEXTET[text[size - 2]] & (64 | 3):  # one: its low 2 bits unused
        return -1
    return size // 4 * 3 - 1


def base64_size(raw):
    """`_base64_size` of a `msgspec.Raw` (the JSON of one value, as received), for the
    tests: -1 for text the fast path does not relay."""
    cdef Py_buffer view
    PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE)
    try:
        return _base64_size(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


# --- frames written around the text relayed ---------------------------------------------
# The frames the fast path writes are the full path's encoders' output with a hole where
# the base64 text (or a mark's number) goes: the bytes around it are made once by the wire
# modules (`twilio.media_stream.relay_parts`, `agent.events.input_audio_parts`) and passed
# in; a frame is those bytes and the text copied together, no message struct built a frame.

cdef inline char* _put(char* out, bytes part) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(part)
    memcpy(out, PyBytes_AS_STRING(part), n)
    return out + n


# Frames are put together in one buffer for the whole module, then written (or copied, when
# the socket cannot take them at once) before anything else runs: one buffer that stays in
# the cache, where a buffer a socket (picows's own, or ours) was cold at each frame. It is
# the event loop's thread's, the first to ask; a socket on any other thread uses its own.
cdef char* _scratch = NULL
cdef Py_ssize_t _scratch_size = 0
cdef unsigned long _scratch_thread = 0
cdef enum:
    HEADROOM = 14  # picows writes a frame's header (at most 14 bytes) before its payload


cdef char* _grown(char* buffer, Py_ssize_t* size, Py_ssize_t needed) except NULL:
    if needed <= size[0]:
        return buffer
    buffer = <char*>PyMem_Realloc(buffer, needed)
    if buffer == NULL:
        raise MemoryError()
    size[0] = needed
    return buffer


cdef Py_ssize_t _decimal(long long number, char* end) noexcept:
    """Writes `number` (not negative) in decimal just before `end`; returns its length."""
    cdef Py_ssize_t n = 0
    while True:
        n += 1
        end[-n] = <char>(48 + number % 10)  # 48: '0'
        number //= 10
        if number == 0:
            return n


# --- marks -------------------------------------------------------------------------------

cdef long long _mark_number(object name, str prefix) except -2:
    """The number in a mark's name if it is the prefix and decimal digits only (a mark
    sent mid-reply: the ledger's other marks have a suffix); else -1."""
    cdef str text
    cdef Py_ssize_t i, n, start = len(prefix)
    cdef long long number = 0, digit
    if type(name) is not str:
        return -1
    text = <str>name
    n = len(text)
    if n <= start or n - start > 15 or not text.startswith(prefix):
        return -1
    for i in range(start, n):
        digit = <long long>(<Py_UCS4>text[i]) - 48  # 48: '0'
        if digit < 0 or digit > 9:
            return -1
        number = number * 10 + digit
    return number


def mark_number(name, str prefix):
    """`_mark_number`, for the tests."""
    return _mark_number(name, prefix)


cdef class AudioSocket(WSListener):
    """What both audio sockets share: a transport that sends may go straight to."""

    # The socket's own transport while a frame may be sent on it without checks (open,
    # keeping up, not given up); None otherwise. The socket sets it with its state.
    # Typed object, checked per frame: only picows's own transport is sent to from here.
    cdef public object direct
    # We ended the socket: frames still in the read buffer are ignored (by `_on_frame`).
    cdef public bint stopped
    cdef object _decode  # a whole text frame to a message (raises if it is not one)
    cdef char* _own  # where frames are put together off the event loop's thread
    cdef Py_ssize_t _own_size

    def __init__(self):
        self.direct = None
        self.stopped = False

    def __dealloc__(self):
        PyMem_Free(self._own)

    cdef char* _room(self, Py_ssize_t size) except NULL:
        """A buffer of at least `size` bytes to put a write together in (see `_scratch`)."""
        global _scratch, _scratch_size, _scratch_thread
        cdef unsigned long thread = PyThread_get_thread_ident()
        if _scratch_thread == 0:
            _scratch_thread = thread
        if thread == _scratch_thread:
            _scratch = _grown(_scratch, &_scratch_size, size)
            return _scratch
        self._own = _grown(self._own, &self._own_size, size)
        return self._own

    def _on_frame(self, transport, frame):
        raise NotImplementedError

    cdef inline object _message(self, AudioSocket peer, WSFrame frame):
        """The decoded message of a whole text frame while `peer` (the other side) may be
        sent to at once; else None, and the frame takes the full path."""
        if peer is None or not isinstance(peer.direct, WSTransport):
            return None
        return self._decoded(frame)

    cdef inline object _decoded(self, WSFrame frame):
        """The decoded message of a whole text frame; else None (the full path's)."""
        if (self.stopped or frame.msg_type != WSMsgType.TEXT or not frame.fin
                or frame.rsv1 or frame.rsv2 or frame.rsv3):  # reserved bits: refused there
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
    cdef bytes _input_head  # an `input.audio` message is these around the text
    cdef bytes _input_tail
    cdef object _clock
    cdef double _frame_seconds
    cdef double _slack_seconds
    # Marks: those sent and not yet echoed are numbered _marks_from to _next_mark - 1
    # (the agent's socket numbers the marks it sends from _next_mark); their echoes are
    # held back in _echoes, (number, when), for the bridge.
    cdef object _mark_type
    cdef str _mark_prefix
    cdef object _echo_clock
    cdef long long _marks_from
    cdef long long _next_mark
    cdef list _echoes

    def __init__(self):
        AudioSocket.__init__(self)
        self._agent = None
        self.media_due = float("-inf")
        self.relayed_frames = 0
        self._echoes = None

    def configure_fast_path(self, decode, media_type, input_audio_parts, clock,
                            double frame_seconds, double slack_seconds,
                            mark_type, str mark_prefix, echo_clock):
        """How to read Twilio's frames (`decode` to `media_type`, its payload a
        `msgspec.Raw`), write the agent's (the payload between `input_audio_parts`, two
        bytes), and pace them (`bridge.pacing`, by `clock`); which echoes of our marks to
        hold back (`mark_type`, named `mark_prefix` and a number) and what to time them by."""
        self._decode = decode
        self._media_type = media_type
        self._input_head, self._input_tail = input_audio_parts
        self._clock = clock
        self._frame_seconds = frame_seconds
        self._slack_seconds = slack_seconds
        self._mark_type = mark_type
        self._mark_prefix = mark_prefix
        self._echo_clock = echo_clock

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef AudioSocket agent = self._agent
        cdef double now, due
        cdef long long number
        cdef Py_buffer text
        message = self._message(agent, frame)
        if type(message) is self._media_type:  # first: nearly every frame
            PyObject_GetBuffer(message.media.payload, &text, PyBUF_SIMPLE)
            try:
                if _base64_size(<const unsigned char*>text.buf, text.len) > 0:
                    # `bridge.pacing.admit_media`, on the parameters it was configured
                    # with; a frame it refuses takes the full path (refused, counted).
                    now = self._clock()
                    due = self.media_due
                    if due < now:
                        due = now
                    if due - now <= self._slack_seconds:
                        self.media_due = due + self._frame_seconds
                        self.relayed_frames += 1
                        self._send_input_audio(<WSTransport>agent.direct,
                                               <const char*>text.buf, text.len)
                        return
            finally:
                PyBuffer_Release(&text)
        elif type(message) is self._mark_type:
            number = _mark_number(message.mark.name, self._mark_prefix)
            if self._marks_from <= number < self._next_mark:
                if self._echoes is None:
                    self._echoes = []
                self._echoes.append((number, self._echo_clock()))
                self._marks_from = number + 1  # Twilio echoes in order
                return
        self._on_frame(transport, frame)

    cdef _send_input_audio(self, WSTransport direct, const char* text, Py_ssize_t n):
        """The `input.audio` message of base64 `text` (a JSON string, `n` bytes), put
        together where picows masks and frames it in place."""
        cdef Py_ssize_t size = (PyBytes_GET_SIZE(self._input_head) + n
                                + PyBytes_GET_SIZE(self._input_tail))
        cdef char* message = self._room(HEADROOM + size) + HEADROOM
        cdef char* at = _put(message, self._input_head)
        memcpy(at, text, n)
        _put(at + n, self._input_tail)
        direct.send_reuse_external_buffer(WSMsgType.TEXT, message, size)


cdef class AgentAudioSocket(AudioSocket):
    """Agent audio (`reply.audio`) to the caller (Twilio `media`), between two marks."""

    cdef TwilioAudioSocket _twilio  # where the reply's audio goes while the route is open
    cdef object _reply_id
    cdef object _stream_sid  # the stream the four parts below are for
    cdef Py_ssize_t _budget  # bytes before a mark is due: a mark after the chunk that spends it
    cdef bint _quiet_only  # only chunks not audible: the first audible one takes the full path
    cdef Py_ssize_t _audible_share
    cdef long long relayed_frames
    cdef long long relayed_bytes
    cdef list _marks  # the marks sent, each as relayed_bytes up to it; None: none
    cdef object _audio_type
    cdef object _frame_parts
    cdef bytes _media_head  # a `media` message is these around the text
    cdef bytes _media_tail
    cdef bytes _mark_head  # a `mark` message these around the mark's number
    cdef bytes _mark_tail
    cdef Py_ssize_t _mark_every

    def __init__(self):
        AudioSocket.__init__(self)
        self._twilio = None
        self.relayed_frames = 0
        self.relayed_bytes = 0
        self._marks = None

    def configure_fast_path(self, decode, audio_type, frame_parts, Py_ssize_t mark_every,
                            Py_ssize_t audible_share=16):
        """How to read the agent's frames (`decode`; audio to `audio_type`, its data a
        `msgspec.Raw`) and write Twilio's (`frame_parts(stream_sid)`: the bytes around
        a media message's text and around a mark's number), how far apart marks are
        (`mark_every` bytes) and what audible is (`_audible`'s share): the ledger's
        `FastPathMarks`."""
        if mark_every <= 0:
            raise ValueError(f"mark_every must be positive, not {mark_every}")
        if audible_share <= 0:
            raise ValueError(f"audible_share must be positive, not {audible_share}")
        self._audible_share = audible_share
        self._decode = decode
        self._audio_type = audio_type
        self._frame_parts = frame_parts
        self._mark_every = mark_every

    cdef _for_stream(self, stream_sid):
        if stream_sid is not self._stream_sid:  # once a call: the bridge keeps its sid
            self._media_head, self._media_tail, self._mark_head, self._mark_tail = (
                self._frame_parts(stream_sid)
            )
            self._stream_sid = stream_sid

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef TwilioAudioSocket twilio = self._twilio
        cdef Py_ssize_t size
        cdef long long mark
        cdef Py_buffer text
        # Decoded here with or without a route: the agent's other events are delivered
        # from here too, not decoded again in Python.
        event = self._decoded(frame)
        if event is None:
            self._on_frame(transport, frame)
            return
        if type(event) is self._audio_type:
            if (twilio is not None and isinstance(twilio.direct, WSTransport)
                    and event.reply_id == self._reply_id):
                PyObject_GetBuffer(event.data, &text, PyBUF_SIMPLE)
                try:
                    size = _base64_size(<const unsigned char*>text.buf, text.len)
                    if size > 0 and not (self._quiet_only and _audible(
                            <const unsigned char*>text.buf, text.len, self._audible_share)):
                        self.relayed_frames += 1
                        self.relayed_bytes += size
                        self._budget -= size
                        if self._budget > 0:
                            mark = -1
                        else:
                            # A mark is due (the ledger's rule, `FastPathMarks`): the next
                            # number, and the next budget `_mark_every` further on.
                            mark = twilio._next_mark
                            twilio._next_mark += 1
                            if self._marks is None:
                                self._marks = []
                            self._marks.append(self.relayed_bytes)
                            while self._budget <= 0:
                                self._budget += self._mark_every
                        self._write(<WSTransport>twilio.direct, <const char*>text.buf,
                                    text.len, mark)
                        return
                finally:
                    PyBuffer_Release(&text)
            self._on_frame(transport, frame)  # its audio is still text: decoded there
            return
        self._deliver(event)  # decoded already: the full path from there on

    cdef _write(self, WSTransport direct, const char* text, Py_ssize_t n, long long mark):
        """The media message of base64 `text` (a JSON string, `n` bytes), and the mark
        numbered `mark` if it is not negative, in one write to Twilio's transport."""
        cdef char digits[24]
        cdef char* end = digits + 24
        cdef Py_ssize_t media_size, media_header, total, mark_size = 0, mark_header = 0
        cdef Py_ssize_t number_size = 0
        cdef char* out
        cdef char* start
        if direct.is_close_frame_sent or direct.is_disconnected:
            return  # closing: picows's own send would drop them as well
        media_size = PyBytes_GET_SIZE(self._media_head) + n + PyBytes_GET_SIZE(self._media_tail)
        media_header = direct._get_header_size(media_size)
        total = media_header + media_size
        if mark >= 0:
            number_size = _decimal(mark, end)
            mark_size = (PyBytes_GET_SIZE(self._mark_head) + number_size
                         + PyBytes_GET_SIZE(self._mark_tail))
            mark_header = direct._get_header_size(mark_size)
            total += mark_header + mark_size
        # Twilio's socket is one we accepted: a server's frames are not masked, a header
        # in front of each is all it takes. Both leave in one write: one system call and
        # one packet, not two.
        start = out = self._room(total)
        direct._prepare_header(<uint8_t*>out, WSMsgType.TEXT, media_size, True, False, False,
                               False)
        out = _put(out + media_header, self._media_head)
        memcpy(out, text, n)
        out = _put(out + n, self._media_tail)
        if mark >= 0:
            direct._prepare_header(<uint8_t*>out, WSMsgType.TEXT, mark_size, True, False,
                                   False, False)
            out = _put(out + mark_header, self._mark_head)
            memcpy(out, end - number_size, number_size)
            _put(out + number_size, self._mark_tail)
        direct._fast_write(start, total)

    def _deliver(self, event):
        raise NotImplementedError


# --- what the runner does with a call's two sockets (one call each, not one a socket) ---

def take_relayed(TwilioAudioSocket twilio, AgentAudioSocket agent):
    """(caller frames, agent frames, agent bytes, marks sent or None, echoes held back or
    None) since the last call, as `CallBridge.relayed` takes them; None if nothing."""
    if (twilio.relayed_frames == 0 and agent.relayed_frames == 0
            and twilio._echoes is None):
        return None
    out = (twilio.relayed_frames, agent.relayed_frames, agent.relayed_bytes,
           agent._marks, twilio._echoes)
    twilio.relayed_frames = agent.relayed_frames = agent.relayed_bytes = 0
    agent._marks = twilio._echoes = None
    return out


def set_routes(TwilioAudioSocket twilio, AgentAudioSocket agent, route):
    """Set the bridge's `AudioRoute`: (caller audio to the agent?, stream sid or None,
    reply id, bytes before the next mark, first mark not echoed, next mark, quiet chunks
    only?)."""
    to_agent, stream_sid, reply_id, budget, marks_from, next_mark, quiet_only = route
    twilio._agent = agent if to_agent else None
    twilio._marks_from = marks_from
    twilio._next_mark = next_mark
    if stream_sid is None:
        agent._twilio = None
    else:
        agent._for_stream(stream_sid)
        agent._twilio = twilio
        agent._reply_id = reply_id
        agent._budget = budget
        agent._quiet_only = quiet_only


def end_routes(TwilioAudioSocket twilio, AgentAudioSocket agent):
    """No route either way (and no reference from one socket to the other)."""
    twilio._agent = None
    agent._twilio = None
