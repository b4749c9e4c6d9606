"""An instance that stopped answering: its calls are over, and their records say so.

The shared state notices (its heartbeat expired) and hands one survivor the calls it held;
here they are closed in the records as ended by "instance_lost", so that nothing stays live
forever. If that instance comes back with its spool, what it recorded still goes in.
"""

from __future__ import annotations

import time

from callbridge.logs import EventLogger
from callbridge.records.entries import CallClosed
from callbridge.records.store import CallStore
from callbridge.server.shared_state import InstanceLostHandler

# After any sequence number the lost instance could have given the call's entries.
_LOST_SEQ = 2**31 - 1
LOST_REASON = "instance lost"


def close_lost_calls(records: CallStore, log: EventLogger) -> InstanceLostHandler:
    async def close(instance_id: str, call_ids: list[str]) -> None:
        now = time.time()
        for call_id in call_ids:
            records.submit(
                CallClosed(
                    call_id=call_id,
                    seq=_LOST_SEQ,
                    at=now,
                    ended_by="instance_lost",
                    reason=LOST_REASON,
                )
            )
            log.warning("call.instance_lost", call_id=call_id, lost_instance=instance_id)

    return close
