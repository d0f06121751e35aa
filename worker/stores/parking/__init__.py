"""Parked messages: interface (:mod:`.base`), Redis backend, in-memory stub."""

from worker.stores.parking.base import ParkedMessage, Parking
from worker.stores.parking.memory import MemoryParking
from worker.stores.parking.redis import RedisParking

__all__ = ["MemoryParking", "ParkedMessage", "Parking", "RedisParking"]
