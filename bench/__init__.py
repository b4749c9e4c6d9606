"""`make bench`: what callbridge costs per call, measured against two minimal relays.

Method. `python -m bench` runs, for each N of a sweep, N simultaneous simulated calls
through a server process pinned to core 0: the real `callbridge serve` (signatures on,
INFO logging, the default bot), then a minimal relay on aiohttp (the stack callbridge's
HTTP side is built on) and one on picows with raw callbacks (the practical floor for
Python, and the library of callbridge's audio sockets). The load runs on
core 1 in one uvloop process (`bench.harness`) that plays both Twilio (picows clients
driven through the simulator's signed webhook and upgrade) and the Voice Agent API (a
lean picows server, `bench.agent`), at real-time pace: a 160-byte μ-law frame every
20 ms from each caller, 300 bytes every 37.5 ms from the agent while it speaks, with
speech bursts from the caller that cause barge-ins, and tool calls.

Every frame carries its send time and a sequence number inside its audio bytes (see
`bench.stamp`), which the bridge forwards untouched; the far end reads them to get
one-way latency each way, loss and reordering. Server CPU time over the measurement
window divided by the frames delivered in it gives CPU per relayed frame; server RSS
before and during the calls gives RSS per call. The harness's own CPU is reported, with a
warning when it nears its core, because then the load generator, not the server, may be
the limit.

Timings are never pass/fail: the machine is shared and noisy. `tests/test_bench.py`
only checks that `--quick` runs and reports sane figures. `bench.hot_path` measures the
per-frame Python alone, without sockets (and, under callgrind, in instructions).
"""
