"""Instructions per relayed frame, whole server, from a callgrind dump (`--callgrind`).

CPU time on this shared machine moves ±20% between identical runs, which hides any change
smaller than that. Instructions executed do not move with the machine's load: counted by
`valgrind --tool=callgrind` over the harness's measurement window (zeroed when it opens,
dumped when it closes) and divided by the frames relayed in it, they compare two servers,
or two builds of one, to a fraction of a percent in one run each. They cover user space
only (the kernel's share, about the same for every server, is not in them), and a server
under callgrind runs some 50 times slower, so only a few calls fit (`--calls 4` by default)
and the run's latencies mean nothing.

The dump is split two ways:

* where the work starts, by the inclusive cost of the event loop's entry points: picows's
  frame callbacks (the audio path and every other message), the rest of socket I/O
  (reading, frame parsing, writing), ready callbacks (task steps, futures: records, tools,
  timers' follow-ups), timer callbacks, other threads (SQLite's, the executor's), greenlets
  (SQLAlchemy's asyncio layer: the records' database work), the loop's own bookkeeping,
  and what callgrind could not place (calls in progress when the counts were zeroed or
  dumped);
* where it is spent, by the self cost of each shared object: libpython (the bytecode loop,
  attribute and dict lookups, allocation), msgspec, picows, uvloop, libc, SQLite.

The total is the dump's `summary` line, callgrind's count of the instructions executed in
the window. Its cost lines add up to more (`cost_lines_per_frame`): a thread that sleeps
across the zeroing or a dump (an executor's worker, SQLite's) brings costs from before
into the lines it adds when it wakes (a test run showed a thread that did ~16,000
instructions after a dump add ~4 million to the next one's lines). The split above is
of the cost lines, so its parts are shares of that larger sum, the excess in `unplaced`.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

# Inclusive-cost entry points (callgrind's function names for uvloop's and picows's
# Cython code, stable across their releases so far).
_LOOP_RUN = "__pyx_f_6uvloop_4loop_4Loop__run"
_IO_EVENTS = "__pyx_f_6uvloop_4loop___on_uvpoll_event"
_FRAME_CALLBACKS = "__pyx_f_6picows_6picows_10WSProtocol__invoke_on_ws_frame"
_READY_CALLBACKS = "__pyx_f_6uvloop_4loop_4Loop__on_idle"
_TIMER_CALLBACKS = "__pyx_f_6uvloop_4loop___uvtimer_callback"
_THREADS = "start_thread"  # glibc's entry for every thread but the main one
_GREENLET_ROOT = "UserGreenlet::inner_bootstrap"

# Shared objects, by a part of their file name, in the order they are tried.
LIBRARIES = (
    ("libpython", ("libpython", "/bin/python")),
    ("msgspec", ("msgspec/_core",)),
    ("picows", ("picows/picows",)),
    ("uvloop", ("uvloop/",)),
    ("aiofastnet", ("aiofastnet/",)),
    ("libc", ("libc.so", "libc-")),
    ("sqlite", ("sqlite",)),
)
_NAMED = re.compile(r"\((\d+)\)(?: (.*))?")


class Dump:
    """Self and inclusive instruction counts per function, and self counts per object."""

    def __init__(self, path: Path) -> None:
        self.summary: int | None = None  # instructions executed, as callgrind counted them
        # Every event of the summary line by name: under `--cache-sim=yes` and
        # `--branch-sim=yes`, the simulated cache misses and branch mispredictions too.
        self.summary_events: dict[str, int] = {}
        self.self_cost: Counter[str] = Counter()
        self.inclusive: Counter[str] = Counter()
        self.by_object: Counter[str] = Counter()
        self._parse(path)

    @property
    def total(self) -> int:
        return sum(self.self_cost.values())

    def _parse(self, path: Path) -> None:
        # The format: "fn=(id) name" defines a name once, "fn=(id)" refers to it; a cost
        # line after "calls=" is the callee's inclusive cost, any other is the function's
        # own. Only the first event (Ir: instructions) is read.
        tables: dict[str, dict[str, str]] = {"ob": {}, "fn": {}, "fl": {}}
        fn = ob = "?"
        after_calls = False
        names: list[str] = []
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                head = line[:1]
                if head.isdigit() or head in "+-*":
                    parts = line.split()
                    if len(parts) >= 2:
                        cost = int(parts[1])
                        self.inclusive[fn] += cost
                        if not after_calls:
                            self.self_cost[fn] += cost
                            self.by_object[ob] += cost
                    after_calls = False
                    continue
                if line.startswith("events:"):
                    names = line.split()[1:]
                    continue
                if line.startswith("summary:"):
                    counts = [int(v) for v in line.split()[1:]]
                    self.summary = counts[0]
                    # Callgrind leaves out trailing zeros (no last-level misses, say).
                    self.summary_events = dict(zip(names, counts, strict=False))
                    continue
                key, _, value = line.rstrip("\n").partition("=")
                if key == "calls":
                    after_calls = True
                elif key in ("fn", "cfn"):
                    name = _name(tables["fn"], value)
                    if key == "fn":
                        fn = name
                elif key in ("ob", "cob"):
                    name = _name(tables["ob"], value)
                    if key == "ob":
                        ob = name
                elif key in ("fl", "fi", "fe", "cfi", "cfl"):
                    _name(tables["fl"], value)


def _name(table: dict[str, str], value: str) -> str:
    match = _NAMED.match(value)
    if match is None:
        return value  # not compressed
    ident, name = match.groups()
    if name is not None:
        table[ident] = name
    return table.get(ident, "?")


def library(object_path: str) -> str:
    for name, parts in LIBRARIES:
        if any(part in object_path for part in parts):
            return name
    return "other"


def per_frame(dump: Dump, frames: int) -> dict[str, object]:
    """The figures for one run: instructions per relayed frame, split both ways."""
    if frames <= 0:
        raise ValueError("no frames relayed in the window: nothing to divide by")
    total = dump.total
    loop = dump.inclusive.get(_LOOP_RUN, 0)
    io_events = dump.inclusive.get(_IO_EVENTS, 0)
    frame_callbacks = dump.inclusive.get(_FRAME_CALLBACKS, 0)
    ready = dump.inclusive.get(_READY_CALLBACKS, 0)
    timers = dump.inclusive.get(_TIMER_CALLBACKS, 0)
    where = {
        "frame_callbacks": frame_callbacks,
        "socket_io": max(io_events - frame_callbacks, 0),
        "ready_callbacks": ready,
        "timer_callbacks": timers,
        "other_threads": dump.inclusive.get(_THREADS, 0),
        # SQLAlchemy's asyncio layer runs the records' database work in greenlets, whose
        # stacks callgrind sees start afresh, not under the loop that switched to them.
        "greenlets": sum(v for k, v in dump.inclusive.items() if _GREENLET_ROOT in k),
        # The loop's own work between callbacks (polling, its bookkeeping).
        "loop_other": max(loop - io_events - ready - timers, 0),
    }
    # What callgrind could not place: calls in progress when the counts were zeroed or
    # dumped, and the like.
    where["unplaced"] = max(total - sum(where.values()), 0)
    libraries: Counter[str] = Counter()
    for obj, cost in dump.by_object.items():
        libraries[library(obj)] += cost
    executed = dump.summary if dump.summary is not None else total
    figures: dict[str, object] = {
        "instructions_per_frame": round(executed / frames),
        "cost_lines_per_frame": round(total / frames),
        "frames": frames,
        "where_started": {k: round(v / frames) for k, v in where.items()},
        "where_spent": {k: round(v / frames) for k, v in libraries.most_common()},
    }
    simulated = {k: v for k, v in dump.summary_events.items() if k in SIMULATED_EVENTS}
    if simulated:  # a --simulate-cpu run
        figures["simulated_per_frame"] = {k: round(v / frames, 1) for k, v in simulated.items()}
    return figures


# callgrind's simulated events: cache misses (`--cache-sim=yes`) of instruction fetches,
# data reads and data writes at the first level and the last; branches (`--branch-sim=yes`),
# conditional and indirect, and how many of each were mispredicted.
SIMULATED_EVENTS = ("I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw", "Bc", "Bcm", "Bi", "Bim")
