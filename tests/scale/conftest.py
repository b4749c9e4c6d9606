"""Fixtures for several instances answering one line: Redis, nginx in front, PostgreSQL.

Redis is the server at 127.0.0.1:6379; each test gets a key prefix of its own (so parallel
test workers never meet) and its keys are deleted afterwards. nginx is Debian's binary, run
by the test with a configuration it writes. Without either, the tests that need it are
skipped with a note, unless CALLBRIDGE_REQUIRE_SERVICES=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


def _unavailable(what: str, why: str) -> None:
    message = f"{what} is not available ({why})"
    if os.environ.get("CALLBRIDGE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}; CALLBRIDGE_REQUIRE_SERVICES=1 requires it")
    pytest.skip(f"{message}; the scale-out tests that need it are skipped")


@pytest.fixture(scope="session")
def redis_server() -> str:
    try:
        import redis
    except ImportError:
        _unavailable("the redis client", "pip install 'callbridge[redis]'")
    try:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        _unavailable(f"Redis at {REDIS_HOST}:{REDIS_PORT}", f"{type(exc).__name__}: {exc}")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_server: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"cbtest-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_server)
    try:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def redis_keys(url: str, pattern: str) -> list[str]:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return sorted(client.scan_iter(pattern, count=1000))
    finally:
        client.close()


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        _unavailable("nginx", "apt-get install -y nginx")
    assert found is not None
    return found


@pytest.fixture
async def pg_database_url() -> AsyncIterator[str]:
    """The records database the instances share: a PostgreSQL schema of this test's own."""
    import asyncpg  # type: ignore[import-untyped]

    from tests.records.conftest import PG_DATABASE, PG_HOST, PG_PORT, _find_pg_user

    user, why = _find_pg_user()
    if user is None:
        _unavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT}/{PG_DATABASE}", why)
    schema = f"cbscale_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=user, database=PG_DATABASE)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    options = f"options=-csearch_path%3D{schema}%20-capplication_name%3D{schema}"
    try:
        yield f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}?{options}"
    finally:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            schema,
        )
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
