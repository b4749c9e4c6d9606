"""`callbridge calls list|show` and `callbridge db upgrade`, run as the real Typer apps."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import typer
from typer.testing import CliRunner, Result

from callbridge.cli.records import calls_app, db_app
from callbridge.records.database import head_revision
from callbridge.records.entries import CallClosed, CallOpened, CallStatusChanged
from callbridge.records.queries import CallQuery

from .conftest import T0, Backend, StoreFactory, full_call
from .test_api import validator

SID = "CA" + "1" * 32


async def cli(app: typer.Typer, *args: str, database_url: str) -> Result:
    # In a thread: the command runs its own event loop, as it does from a shell.
    def invoke() -> Result:
        return CliRunner().invoke(app, list(args), env={"DATABASE_URL": database_url})

    return await asyncio.to_thread(invoke)


@pytest.fixture(autouse=True)
def no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # settings also read ./.env


@pytest.fixture
async def recorded(make_store: StoreFactory) -> dict[str, Any]:
    """Three calls: the full synthetic one (old), a recent busy one, a recent live one."""
    now = datetime.datetime.now(datetime.UTC).timestamp()
    store = make_store()
    await store.start()
    for entry in full_call():
        store.submit(entry)
    store.submit(CallStatusChanged("CA" + "b" * 32, "busy", now - 60, 2, direction="outbound-api"))
    store.submit(CallOpened("live-1", 0, now - 30, "inbound", from_number="+15550009999"))
    await store.flush()
    detail = await store.get_call("call-1")
    page = await store.list_calls(CallQuery())
    await store.close()
    return {"detail": json.loads(msgspec.json.encode(detail)), "page": page}


async def test_list_shows_calls_newest_first(backend: Backend, recorded: dict[str, Any]) -> None:
    result = await cli(calls_app, "list", database_url=backend.url)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["STARTED", "(UTC)", "CALL"]
    assert [line.split()[2] for line in lines[1:]] == ["live-1", "CA" + "b" * 32, "call-1"]
    assert "completed" in lines[3] and "8.0s" in lines[3] and SID in lines[3]
    assert "busy" in lines[2] and "outbound" in lines[2]


async def test_list_json_is_the_api_shape(backend: Backend, recorded: dict[str, Any]) -> None:
    result = await cli(calls_app, "list", "--json", database_url=backend.url)
    assert result.exit_code == 0, result.stderr
    calls = json.loads(result.stdout)
    for call in calls:
        validator("CallSummary").validate(call)
    assert calls == json.loads(msgspec.json.encode(recorded["page"].calls))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--since", "24h"], ["live-1", "CA" + "b" * 32]),
        (["--since", "2026-09-21"], ["live-1", "CA" + "b" * 32, "call-1"]),
        (["--since", "2026-09-22T00:00:00Z"], ["live-1", "CA" + "b" * 32]),
        (["--status", "busy"], ["CA" + "b" * 32]),
        (["--status", "COMPLETED"], ["call-1"]),
        (["--status", "in-progress"], ["live-1"]),
        (["--direction", "outbound"], ["CA" + "b" * 32, "call-1"]),
        (["--limit", "1"], ["live-1"]),
        (["--status", "failed"], []),
    ],
)
async def test_list_filters(
    backend: Backend, recorded: dict[str, Any], options: list[str], expected: list[str]
) -> None:
    result = await cli(calls_app, "list", "--json", *options, database_url=backend.url)
    assert result.exit_code == 0, result.stderr
    assert [c["call_id"] for c in json.loads(result.stdout)] == expected


async def test_list_with_nothing_to_show(backend: Backend, recorded: dict[str, Any]) -> None:
    result = await cli(calls_app, "list", "--status", "canceled", database_url=backend.url)
    assert (result.exit_code, result.stdout) == (0, "No calls.\n")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--since", "yesterday"], "invalid since 'yesterday'"),
        (["--since", "2026-13-01"], "invalid since"),
        (["--status", "done"], "invalid status 'done'"),
        (["--direction", "sideways"], "invalid direction"),
        (["--limit", "0"], "invalid limit 0"),
    ],
)
async def test_list_usage_errors_are_one_line_and_exit_2(
    backend: Backend, options: list[str], message: str
) -> None:
    result = await cli(calls_app, "list", *options, database_url=backend.url)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("callbridge: ") and message in result.stderr


async def test_show_tells_the_conversation(backend: Backend, recorded: dict[str, Any]) -> None:
    for key in ("call-1", SID):
        result = await cli(calls_app, "show", key, database_url=backend.url)
        assert result.exit_code == 0, result.stderr
        out = result.stdout
        assert out.startswith("Call call-1  outbound  +15551230000 -> +15557650000  [completed]")
        assert "ended    +8.00s by caller (caller hung up)" in out
        assert "Twilio: ringing -2.00s, in-progress -0.50s, completed +8.50s (9 s billed)" in out
        assert "Agent sessions: sess-a, sess-b (resumed); resumes: 1" in out
        assert "400 from Twilio, 390 to the agent, 350 to Twilio; dropped: after_clear 3" in out
        conversation = out.split("\n\n", 1)[1].splitlines()
        assert conversation == [
            "   +0.20s  session started sess-a",
            "   +0.50s  agent   Hi, this is the bike shop.  [heard 2.50s of 2.50s]",
            "   +4.00s  caller  Is my bike ready?",
            '   +4.60s  tool    repair_status({"ticket":42}) -> {"ready":true}  (86 ms)',
            "   +4.90s  latency first words sent 1520 ms, played 1590 ms "
            "(first audio sent 640 ms, played 710 ms) after the caller stopped",
            "   +5.00s  agent   Yes, it is ready for pick-up today  [interrupted: heard 1.25s"
            " of 3.20s]",
            '   +5.50s  tool    book_slot({"day":"sat"}) -> no result  [discarded: its reply was'
            " interrupted]",
            "   +6.00s  session resumed sess-b",
            "   +6.10s  error   agent connection_lost: resumed within 30 s",
            "   +7.00s  caller  Great, thanks, bye.",
            "   +7.20s  action  keypad-entry by caller: entered (4 keys)",
            "   +7.50s  action  transfer to a person by agent: busy",
            "   +7.60s  config  voice alba; tools repair_status; prompt 'You call Alice about her"
            " bike.'; keyterms 1",
            "   +7.70s  action  hang-up by agent: after-goodbye",
        ]
        assert "  Bot shop; set-up: configured\n  Parameters: name=Alice, ticket=42\n" in out


async def test_show_json_is_the_api_shape(backend: Backend, recorded: dict[str, Any]) -> None:
    result = await cli(calls_app, "show", SID, "--json", database_url=backend.url)
    assert result.exit_code == 0, result.stderr
    detail = json.loads(result.stdout)
    validator("CallDetail").validate(detail)
    assert detail == recorded["detail"]


async def test_show_takes_a_call_id_that_starts_with_a_dash(
    backend: Backend, make_store: StoreFactory
) -> None:
    from callbridge.cli import app

    call_id = "-Wq3_zk9X0aTqv1dL2mBcQ"  # as older servers minted one call in 64
    store = make_store()
    await store.start()
    store.submit(CallOpened(call_id, 0, T0, "inbound", from_number="+15550001111"))
    await store.flush()
    await store.close()
    for args in (
        ("calls", "show", call_id),
        ("calls", "show", call_id, "--json"),
        ("calls", "show", "--json", call_id),
    ):
        result = await cli(app, *args, database_url=backend.url)
        assert result.exit_code == 0, (args, result.output)
        if "--json" in args:
            assert json.loads(result.stdout)["call_id"] == call_id
        else:
            assert result.stdout.startswith(f"Call {call_id}  inbound  +15550001111"), args


async def test_show_an_unknown_call_exits_1(backend: Backend, recorded: dict[str, Any]) -> None:
    result = await cli(calls_app, "show", "CA" + "0" * 32, database_url=backend.url)
    assert result.exit_code == 1
    assert result.stderr == f"callbridge: no call with id or CallSid '{'CA' + '0' * 32}'\n"


async def test_reading_a_database_the_server_never_prepared(backend: Backend) -> None:
    result = await cli(calls_app, "list", database_url=backend.url)
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    if backend.name == "sqlite":
        assert "no call records at" in result.stderr
        assert not (backend.tmp_path / "records.db").exists(), "reading creates nothing"
    else:
        assert "no call records tables yet: run `callbridge db upgrade`" in result.stderr

    upgraded = await cli(db_app, "upgrade", database_url=backend.url)
    assert upgraded.exit_code == 0, upgraded.stderr
    assert f"is at schema revision {head_revision()}" in upgraded.stdout
    listed = await cli(calls_app, "list", database_url=backend.url)
    assert (listed.exit_code, listed.stdout) == (0, "No calls.\n")


async def test_db_upgrade_sql_prints_the_ddl(backend: Backend) -> None:
    result = await cli(db_app, "upgrade", "--sql", database_url=backend.url)
    assert result.exit_code == 0, result.stderr
    assert "CREATE TABLE callbridge_calls" in result.stdout
    # Printed, not run.
    if backend.name == "sqlite":
        assert not (backend.tmp_path / "records.db").exists()
    else:
        tables = "information_schema.tables"
        assert await backend.count(tables, "table_schema = current_schema()") == 0


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        ("mysql://u@db/x", 2, "callbridge: configuration error: DATABASE_URL: unsupported"),
        ("postgresql://nobody@127.0.0.1:1/test", 1, "callbridge: cannot read postgresql://"),
    ],
)
async def test_bad_or_unreachable_database(url: str, code: int, message: str) -> None:
    result = await cli(calls_app, "list", database_url=url)
    assert result.exit_code == code
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message)


async def test_closed_call_is_listed_with_its_ending(
    backend: Backend, make_store: StoreFactory
) -> None:
    store = make_store()
    await store.start()
    store.submit(CallOpened("short", 0, T0, "inbound"))
    store.submit(CallClosed("short", 1, T0 + 2.5, "agent", "said goodbye"))
    await store.flush()
    await store.close()
    result = await cli(calls_app, "show", "short", database_url=backend.url)
    assert "ended    +2.50s by agent (said goodbye)" in result.stdout


async def test_show_a_call_kept_without_its_words(
    backend: Backend, make_store: StoreFactory
) -> None:
    from .test_store import wordy_call

    store = make_store(store_transcripts=False)
    await store.start()
    for entry in wordy_call():
        store.submit(entry)
    await store.flush()
    await store.close()
    result = await cli(calls_app, "show", "quiet", database_url=backend.url)
    assert result.exit_code == 0, result.stderr
    conversation = result.stdout.split("\n\n", 1)[1].splitlines()
    assert conversation == [
        "   +1.00s  caller  (words not stored)",
        "   +2.00s  agent   (words not stored)  [interrupted: heard 0.50s of 2.00s]",
        "   +3.00s  tool    lookup(arguments not stored) -> result not stored",
        "   +0.50s  config  voice alba; prompt (not stored)",
    ]
    assert "  Parameters: name=(not stored)\n" in result.stdout
