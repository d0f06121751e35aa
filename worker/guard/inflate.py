"""Compressed task bodies, inflated with a hard cap on the output (kombu's ``compression`` header).

kombu inflates a body whose headers name a ``compression`` in ``Message.__init__``, before
any consumer hook (and so before :mod:`worker.guard`) sees it, with the standard library's
one-shot functions: a 4 KiB bz2 body became 90 MiB, and, decoded, gigabytes in the worker's
main process. :func:`register_bounded_decompression` replaces kombu's decoders, through its
extension point :func:`kombu.compression.register`, with incremental ones that stop after
``max_bytes`` (the body-size limit, :mod:`worker.limits`) and raise :class:`InflateRefused`.
Compressions with no bounded decoder here (brotli, zstd, when installed) are refused outright.

kombu records that error on the message; :class:`worker.app.GuardedRedisMessage` turns it into
:attr:`~worker.app.GuardedRedisMessage.read_refusal`, which the guard's checks refuse with a
recorded outcome (:mod:`worker.guard.checks`).
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from kombu import compression

__all__ = ["BOUNDED", "InflateRefused", "inflate", "register_bounded_decompression"]


class InflateRefused(ValueError):
    """A compressed body that inflates beyond the cap, is corrupt, or uses a refused method."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


class _ZlibAdapter:
    """``zlib.decompressobj`` behind the bz2/lzma decompressor interface."""

    def __init__(self) -> None:
        self._obj = zlib.decompressobj()

    @property
    def eof(self) -> bool:
        return self._obj.eof

    @property
    def unused_data(self) -> bytes:
        return self._obj.unused_data

    def decompress(self, data: bytes, max_length: int = 0, /) -> bytes:
        return self._obj.decompress(data, max_length)


BOUNDED: dict[str, Callable[[], _Decompressor]] = {
    # kombu's content types (kombu/compression.py): 'gzip' and 'zlib' are aliases of the first.
    "application/x-gzip": _ZlibAdapter,
    "application/x-bz2": bz2.BZ2Decompressor,
    "application/x-lzma": lzma.LZMADecompressor,
}


def inflate(body: Any, content_type: str, max_bytes: int) -> bytes:
    """``body`` inflated, at most ``max_bytes`` of output; :class:`InflateRefused` otherwise."""
    make = BOUNDED.get(content_type)
    if make is None:
        raise InflateRefused(f"compression {content_type[:60]!r} is not accepted")
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    decompressor = make()
    try:
        # One call with a cap of max_bytes + 1: the library never produces more than that.
        out = decompressor.decompress(data, max_bytes + 1)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
        raise InflateRefused(f"the compressed body is corrupt ({type(exc).__name__})") from None
    if len(out) > max_bytes:
        raise InflateRefused(
            f"the compressed body inflates beyond the limit of {max_bytes} bytes "
            f"({len(data)} bytes compressed)"
        )
    if not decompressor.eof or decompressor.unused_data:
        raise InflateRefused("the compressed body is truncated or has trailing data")
    return out


def _refuse(content_type: str) -> Callable[[Any], bytes]:
    def decode(_body: Any) -> bytes:
        raise InflateRefused(f"compression {content_type!r} is not accepted")

    return decode


def register_bounded_decompression(max_bytes: int) -> None:
    """Make every kombu decompression in this process bounded (or refused)."""
    for content_type in compression.encoders():
        found: Any = compression.get_encoder(content_type)  # (encoder, content type)
        encoder = found[0]
        if content_type in BOUNDED:

            def decode(body: Any, _ct: str = content_type) -> bytes:
                return inflate(body, _ct, max_bytes)

            compression.register(encoder, decode, content_type)
        else:
            compression.register(encoder, _refuse(content_type), content_type)
