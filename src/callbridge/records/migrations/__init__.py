"""Versioned schema migrations of the call records (alembic), run by `CallStore.start()`
and `callbridge db upgrade`. New revision: `alembic -x ... revision` is not wired; copy the
latest file in `versions/` and keep `tables.py` in step (a test compares the two)."""
