"""The audio fast path: the common audio frame relayed at C level inside picows's frame
callback, when the compiled module is there (`_compiled.pyx`, built by `make install`
with Cython against picows's published Cython API).

Both picows sockets inherit from the classes here. The call's bridge still decides
everything: after each event it handles, the runner asks it for the audio routes (is
caller audio relayed to the agent now; which reply's audio goes to Twilio, and how many
bytes before the next mark) and sets them here; before it hands the bridge anything,
the runner hands back what the fast path relayed. A frame the routes do not cover takes
the full path (socket -> runner -> bridge), as every frame does without the compiled
module, or with `CALLBRIDGE_FAST_PATH=false` (then the runner sets no routes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from callbridge.fast_path._fallback import Relayed  # what take_relayed returns, either module

WHY_NOT_COMPILED = ""  # why the compiled module is not used, when it is not

if TYPE_CHECKING:  # both modules have one interface; the plain-Python one is typed
    from callbridge.fast_path import _fallback as _module
else:
    import picows

    try:
        from callbridge.fast_path import _compiled as _module
    except ImportError as exc:  # not built (no C compiler at install, say)
        WHY_NOT_COMPILED = f"not built ({exc})"
    except ValueError as exc:  # built against another picows: its types' sizes differ
        WHY_NOT_COMPILED = f"built against another picows ({exc})"
    else:
        if picows.__version__ != _module.BUILT_AGAINST_PICOWS:
            WHY_NOT_COMPILED = (
                f"built against picows {_module.BUILT_AGAINST_PICOWS}, "
                f"running with {picows.__version__}: run `make install`"
            )
    if WHY_NOT_COMPILED:
        from callbridge.fast_path import _fallback as _module

COMPILED = not WHY_NOT_COMPILED

TwilioAudioSocket = _module.TwilioAudioSocket
AgentAudioSocket = _module.AgentAudioSocket
take_relayed = _module.take_relayed
set_routes = _module.set_routes
end_routes = _module.end_routes

__all__ = [
    "COMPILED",
    "WHY_NOT_COMPILED",
    "AgentAudioSocket",
    "Relayed",
    "TwilioAudioSocket",
    "end_routes",
    "set_routes",
    "take_relayed",
]
