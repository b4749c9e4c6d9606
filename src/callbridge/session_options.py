"""Every option of a Voice Agent session beyond prompt, greeting, voice and tools, typed.

`SessionOptions` holds what the first `session.update` may carry (a stored agent's id,
the speech-to-text hints, turn detection, output volume) and a pass-through, `extra`, for
fields the API adds later. Values are checked against the API's limits by `problems()`:
a bot's options when it loads (the server does not start), a call's own when its set-up
returns them (each bad value is replaced by the bot's). Nothing here raises on bad values,
so one bad option never costs a caller the rest.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, NamedTuple

MAX_KEYTERMS = 100
MAX_TRANSCRIPTION_PROMPT_CHARS = 1750
TRANSCRIPTION_MODES = ("balanced", "min_latency", "max_accuracy")
VOICE_FOCUS = ("near-field", "far-field")

TranscriptionMode = Literal["balanced", "min_latency", "max_accuracy"]
VoiceFocus = Literal["near-field", "far-field"]


class OptionProblem(NamedTuple):
    """One value outside the API's limits: where it is (`input.keyterms`) and the limit."""

    field: str
    limit: str
    value: object

    def __str__(self) -> str:
        shown = repr(self.value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"{self.field}: {self.limit} (got {shown})"


class SessionOptionError(ValueError):
    """Options outside the API's limits; the message names each field and its limit."""

    def __init__(self, problems: Sequence[OptionProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class TurnDetection:
    """`input.turn_detection`. Setting `min_silence` or `max_silence` turns off the agent's
    adaptive pacing for the whole session; leave them unset unless you must."""

    vad_threshold: float | None = None  # 0 to 1; lower hears quieter speech
    min_silence: int | None = None  # ms of silence for a confident end of turn
    max_silence: int | None = None  # ms of silence that always ends the turn
    interrupt_response: bool | None = None  # False: the caller cannot talk over the agent
    interruption_delay: int | None = None  # ms, 0 to 1000, before a barge-in may cut in

    def problems(self, prefix: str = "input.turn_detection") -> list[OptionProblem]:
        out: list[OptionProblem] = []
        _number(out, f"{prefix}.vad_threshold", self.vad_threshold, 0, 1)
        _whole(out, f"{prefix}.min_silence", self.min_silence, 0, None)
        _whole(out, f"{prefix}.max_silence", self.max_silence, 0, None)
        if (
            isinstance(self.min_silence, int)
            and isinstance(self.max_silence, int)
            and not out
            and self.min_silence > self.max_silence
        ):
            out.append(
                OptionProblem(
                    f"{prefix}.min_silence",
                    "must not exceed max_silence",
                    self.min_silence,
                )
            )
        if self.interrupt_response is not None and not isinstance(self.interrupt_response, bool):
            value = self.interrupt_response
            out.append(OptionProblem(f"{prefix}.interrupt_response", "true or false", value))
        _whole(out, f"{prefix}.interruption_delay", self.interruption_delay, 0, 1000)
        return out

    def wire(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class SessionOptions:
    """What a session takes besides the prompt, greeting, voice and tools.

    `agent_id` names an agent stored with AssemblyAI: the first `session.update` then
    carries it alone, and the stored agent's prompt, greeting, voice and audio format
    apply (it must use `audio/pcmu`, Twilio's format). The mutable options here, and the
    bot's tools, follow in a second update once the session is ready.

    `extra` is merged into the `session` object as given, for fields the API adds after
    this version; it wins over everything else, so use it with care.
    """

    # Lists and mappings are left out of the hash, so a Bot stays hashable with them.
    agent_id: str | None = None
    keyterms: Sequence[str] | None = field(default=None, hash=False)  # at most 100 to boost
    transcription_prompt: str | None = None  # context for speech-to-text, up to 1750 chars
    transcription_mode: TranscriptionMode | None = None
    language_codes: Sequence[str] | None = field(default=None, hash=False)
    voice_focus: VoiceFocus | None = None
    voice_focus_threshold: float | None = None  # 0 to 1
    turn_detection: TurnDetection | None = None
    volume: float | None = None  # output volume, 0 to 100
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def problems(self) -> list[OptionProblem]:
        """Every value outside the API's limits (empty: all good)."""
        out: list[OptionProblem] = []
        if self.agent_id is not None and (not isinstance(self.agent_id, str) or not self.agent_id):
            out.append(OptionProblem("agent_id", "a non-empty string", self.agent_id))
        _strings(out, "input.keyterms", self.keyterms, MAX_KEYTERMS)
        if self.transcription_prompt is not None and (
            not isinstance(self.transcription_prompt, str)
            or len(self.transcription_prompt) > MAX_TRANSCRIPTION_PROMPT_CHARS
        ):
            out.append(
                OptionProblem(
                    "input.transcription_prompt",
                    f"text of at most {MAX_TRANSCRIPTION_PROMPT_CHARS} characters",
                    self.transcription_prompt,
                )
            )
        _choice(out, "input.transcription_mode", self.transcription_mode, TRANSCRIPTION_MODES)
        _strings(out, "input.language_codes", self.language_codes, None)
        _choice(out, "input.voice_focus", self.voice_focus, VOICE_FOCUS)
        _number(out, "input.voice_focus_threshold", self.voice_focus_threshold, 0, 1)
        if self.turn_detection is not None:
            if isinstance(self.turn_detection, TurnDetection):
                out.extend(self.turn_detection.problems())
            else:
                out.append(
                    OptionProblem("input.turn_detection", "a TurnDetection", self.turn_detection)
                )
        _number(out, "output.volume", self.volume, 0, 100)
        if not isinstance(self.extra, Mapping) or not all(isinstance(k, str) for k in self.extra):
            out.append(OptionProblem("extra", "a mapping of field names", self.extra))
        return out

    def check(self) -> SessionOptions:
        """These options, or SessionOptionError naming every bad field and its limit."""
        problems = self.problems()
        if problems:
            raise SessionOptionError(problems)
        return self

    def over(self, defaults: SessionOptions) -> tuple[SessionOptions, list[OptionProblem]]:
        """These options on top of `defaults` (a bot's): each field set here wins, each bad
        one is replaced by the default's value. Returns the result and what was replaced."""
        merged: dict[str, Any] = {}
        replaced: list[OptionProblem] = []
        for f in fields(self):
            if f.name in ("turn_detection", "extra"):
                continue
            value = getattr(self, f.name)
            if value is None:
                merged[f.name] = getattr(defaults, f.name)
                continue
            bad = replace(SessionOptions(), **{f.name: value}).problems()
            if bad:
                replaced.extend(bad)
                merged[f.name] = getattr(defaults, f.name)
            else:
                merged[f.name] = value
        turns, bad_turns = _turns_over(self.turn_detection, defaults.turn_detection)
        merged["turn_detection"] = turns
        replaced.extend(bad_turns)
        if isinstance(self.extra, Mapping) and all(isinstance(k, str) for k in self.extra):
            merged["extra"] = {**defaults.extra, **self.extra}
        else:
            replaced.append(OptionProblem("extra", "a mapping of field names", self.extra))
            merged["extra"] = dict(defaults.extra)
        return SessionOptions(**merged), replaced

    def input_fields(self) -> dict[str, Any]:
        """The `input` fields these options set."""
        out: dict[str, Any] = {}
        if self.keyterms is not None:
            out["keyterms"] = list(self.keyterms)
        for name in ("transcription_prompt", "transcription_mode", "voice_focus"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.language_codes is not None:
            out["language_codes"] = list(self.language_codes)
        if self.voice_focus_threshold is not None:
            out["voice_focus_threshold"] = self.voice_focus_threshold
        if self.turn_detection is not None:
            out["turn_detection"] = self.turn_detection.wire()
        return out

    def apply_to(self, session: dict[str, Any]) -> dict[str, Any]:
        """`session` (a `session.update`'s object) with these options in it."""
        inputs = self.input_fields()
        if inputs:
            session["input"] = {**session.get("input", {}), **inputs}
        if self.volume is not None:
            session["output"] = {**session.get("output", {}), "volume": self.volume}
        return _deep_merge(session, self.extra)


def _turns_over(
    given: TurnDetection | None, default: TurnDetection | None
) -> tuple[TurnDetection | None, list[OptionProblem]]:
    if given is None:
        return default, []
    if not isinstance(given, TurnDetection):
        return default, [OptionProblem("input.turn_detection", "a TurnDetection", given)]
    base = default or TurnDetection()
    values: dict[str, Any] = {}
    replaced: list[OptionProblem] = []
    for f in fields(given):
        value = getattr(given, f.name)
        if value is None:
            values[f.name] = getattr(base, f.name)
            continue
        bad = replace(TurnDetection(), **{f.name: value}).problems()
        if bad:
            replaced.extend(bad)
            values[f.name] = getattr(base, f.name)
        else:
            values[f.name] = value
    merged = TurnDetection(**values)
    cross = merged.problems()
    if cross:  # min_silence above max_silence: both from the default
        replaced.extend(cross)
        merged = replace(merged, min_silence=base.min_silence, max_silence=base.max_silence)
    return merged, replaced


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        current = base.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            base[key] = _deep_merge(dict(current), value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(out: list[OptionProblem], name: str, value: object, low: float, high: float) -> None:
    if value is not None and (not _is_number(value) or not low <= value <= high):  # type: ignore[operator]
        out.append(OptionProblem(name, f"a number from {low:g} to {high:g}", value))


def _whole(out: list[OptionProblem], name: str, value: object, low: int, high: int | None) -> None:
    if value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high  # type: ignore[operator]
    if not ok:
        limit = f"whole milliseconds from {low} to {high}" if high else f"whole ms, at least {low}"
        out.append(OptionProblem(name, limit, value))


def _strings(out: list[OptionProblem], name: str, value: object, most: int | None) -> None:
    if value is None:
        return
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or not all(isinstance(v, str) for v in value)
    ):
        out.append(OptionProblem(name, "a list of strings", value))
    elif most is not None and len(value) > most:
        out.append(OptionProblem(name, f"at most {most} entries", f"{len(value)} entries"))


def _choice(out: list[OptionProblem], name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        out.append(OptionProblem(name, f"one of {', '.join(allowed)}", value))
