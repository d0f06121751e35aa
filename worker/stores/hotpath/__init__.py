"""The send's hot path: a run's first and last shared-state step, each one round trip.

Interface (:mod:`.base`), Redis backend (composed Lua scripts), and the composition of any
stores' own methods (:class:`ComposedHotPath`, the in-memory stub and the reference).
"""

from worker.stores.hotpath.base import Begin, Begun, Closing, Finish, Finished, HotPath
from worker.stores.hotpath.composed import ComposedHotPath
from worker.stores.hotpath.redis import RedisHotPath

__all__ = [
    "Begin",
    "Begun",
    "Closing",
    "ComposedHotPath",
    "Finish",
    "Finished",
    "HotPath",
    "RedisHotPath",
]
