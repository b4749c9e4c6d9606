"""A server killed with SIGKILL mid-call: what it had spooled is replayed by the next start,
and the call it left open is closed as "interrupted by restart"."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import sys
from pathlib import Path

from .conftest import T0, Backend, StoreFactory

# The server's part: a store as configured by the environment, one call, then killed.
CHILD = """
import asyncio, sys
from callbridge.config import load_settings
from callbridge.records.entries import *
from callbridge.records.store import CallStore, StoreLimits

T0 = float(sys.argv[1])

async def main():
    limits = StoreLimits(retry_initial=0.05, retry_max=0.2, write_timeout=2.0)
    store = CallStore.from_settings(load_settings(), limits=limits)
    await store.start()
    store.submit(CallOpened("doomed", 0, T0, "inbound", call_sid="CA" + "d" * 32))
    store.submit(AgentSessionStarted("doomed", 1, T0 + 0.1, "sess-1"))
    store.submit(TranscriptLine("doomed", 2, T0 + 1, "agent", "Hello!", "r1", False, 1.0, 1.0))
    await store.flush()
    print("committed", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    store.submit(TranscriptLine("doomed", 3, T0 + 3, "caller", "I need help with"))
    store.submit(ToolInvocation("doomed", 4, T0 + 3.5, "t1", "lookup", {"q": "help"}, '"ok"'))
    store.submit(TranscriptLine("doomed", 5, T0 + 4, "agent", "Sure, let", "r2", True, 2.0, 0.4))
    await store.wait_durable()
    print("durable", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_sigkill_mid_call_then_restart(
    backend: Backend, make_store: StoreFactory, tmp_path: Path
) -> None:
    spool_path = tmp_path / "spool.jsonl"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": backend.url,
        "CALLBRIDGE_SPOOL_PATH": str(spool_path),
        "CALLBRIDGE_INSTANCE_ID": "box-1",
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(T0),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,  # no stray .env
        env=env,
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        async with asyncio.timeout(30):
            assert await child.stdout.readline() == b"committed\n", await child.stderr.read()
            await backend.cut()  # so that the rest can only be in the spool when it dies
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            assert await child.stdout.readline() == b"durable\n", await child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(spool_path.read_bytes().splitlines()) == 3
    await backend.restore()
    assert await backend.count("callbridge_transcript_entries") == 1  # only the spool has them

    store = make_store(instance_id="box-1")
    await store.start()
    await store.flush()
    detail = await store.get_call("doomed")
    assert detail is not None
    assert [(t.seq, t.text, t.interrupted) for t in detail.transcript] == [
        (2, "Hello!", False),
        (3, "I need help with", False),
        (5, "Sure, let", True),
    ]
    assert [(t.name, t.arguments, t.result) for t in detail.tool_calls] == [
        ("lookup", {"q": "help"}, '"ok"')
    ]
    assert (detail.ended_by, detail.end_reason) == ("restart", "interrupted by restart")
    assert detail.ended_at == datetime.datetime.fromtimestamp(T0 + 4, datetime.UTC)
    assert detail.instance_id == "box-1"
    await store.close()
    assert not spool_path.exists(), "replayed, committed, emptied"
