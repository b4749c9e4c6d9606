"""An offline fake of AssemblyAI's Voice Agent API server, for tests and load benchmarks.

``FakeVoiceAgent`` is an aiohttp WebSocket server speaking the Voice Agent protocol
(JSON text frames on ``/v1/ws``) as documented at
https://www.assemblyai.com/docs/voice-agents and in the bundled AsyncAPI document
(``voice-agent-api.asyncapi.yaml``). What it does:

* authentication like the live service (``Bearer`` or raw key header, ``?token=``; a bad
  key still gets the upgrade, then ``session.error unauthorized`` and close 1008);
* session set-up: nothing is sent before the first client message; ``session.updated``
  then ``session.ready``; config echo with the live defaults; the live error codes,
  ``param``s and close codes for bad first updates; ``session.resume`` within a window;
* speech: replies are streamed as deterministic synthetic audio
  (:func:`callbridge.testing.audio.synthesize_speech`) at real-time pace (times ``pace``),
  starting with silence, with a burst of word deltas, ``transcript.agent`` and
  ``reply.done``; greetings are spoken right after ``session.ready``;
* user turns are detected from the energy of the caller's audio, measured in audio time
  (bytes), so tests are deterministic; what the "user said" and how the agent answers
  come from a script of :class:`ScriptedTurn`\\ s: first ``FakeVoiceAgent.turns`` (shared
  by all sessions), then the ``script`` each new session starts with, then a default turn;
* barge-in, interactive tool calls (``arguments`` or legacy ``args``, results before or
  after the pre-amble's ``reply.done``, timeout apology, none once the caller interrupted
  the pre-amble, whose results the client discards);
* mid-session errors (``immutable_field``, ``agent_id_not_first``, ``invalid_format``,
  ``invalid_audio``, ``audio_rate_violation``) that keep the socket open;
* fault injection: refused upgrades, capacity errors, delayed accepts, server-side close,
  TCP drops, server-initiated end.

Every client message is checked against the AsyncAPI schema and the protocol rules;
anything a well-behaved client must never do is appended to ``FakeVoiceAgent.violations``.

What it does not do: no speech recognition, language model or real voices (transcripts
and replies are scripted; the "voice" is tones); ``turn_detection`` settings other than
``interrupt_response`` are echoed but not used (the constructor's timings apply); ``hold``
tools behave like ``interactive`` ones; no REST API (tokens, agents, voices) — stored
agents are plain data in ``FakeVoiceAgent.agents``; no session duration cap; audio sent
faster than real time is reported but not dropped.

The package, one concept a module: ``server`` (the aiohttp server, authentication, fault
injection, session set-up and resume), ``session`` (one session: the client's messages,
its socket, its turns), ``turns`` (turn detection from audio energy), ``playback`` (the
agent's replies and tool calls), ``script`` (the per-call script), ``config`` (session
configuration as the live service resolves it), ``formats`` (the audio encodings),
``connection`` (one client socket), ``messages`` and ``waits`` (shared plumbing).
"""

from callbridge.testing.fake_agent.config import DEFAULT_TOOL_TIMEOUT as DEFAULT_TOOL_TIMEOUT
from callbridge.testing.fake_agent.config import DEFAULT_VOICE as DEFAULT_VOICE
from callbridge.testing.fake_agent.config import DEFAULT_VOICES
from callbridge.testing.fake_agent.messages import Event as Event
from callbridge.testing.fake_agent.script import (
    REPLY_CREATE_TEXT,
    TOOL_TIMEOUT_APOLOGY,
    ScriptedTurn,
)
from callbridge.testing.fake_agent.server import ConnectFailure, FakeVoiceAgent
from callbridge.testing.fake_agent.session import FakeSession, Observer

__all__ = [
    "DEFAULT_VOICES",
    "REPLY_CREATE_TEXT",
    "TOOL_TIMEOUT_APOLOGY",
    "ConnectFailure",
    "FakeSession",
    "FakeVoiceAgent",
    "Observer",
    "ScriptedTurn",
]
