"""A bound on how long a client may take to send a request's headers.

uvicorn times out a connection only between requests (``timeout_keep_alive``); a client that opens
a connection and sends nothing, or its headers a byte at a time, holds one of the server's
connections for as long as it likes, and a few hundred such clients take them all. The protocol
here closes a connection whose request headers are not complete within ``header_timeout`` seconds
of its opening (or of the previous answer). The body has its own bound: the request timeout (408).
"""
from __future__ import annotations

from typing import Callable, Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["header_timeout_protocol"]


def header_timeout_protocol(header_timeout: float, on_close: Optional[Callable[[], None]] = None):
    """An uvicorn HTTP/1.1 protocol class (``uvicorn.Config(http=...)``) with the header bound.

    Parameters
    ----------
    header_timeout : float
        Seconds a connection may wait for complete request headers.
    on_close : callable, optional
        Called once per connection closed for being too slow (the metrics count it).
    """

    class HeaderTimeoutH11(H11Protocol):
        _header_timer = None

        def _start_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if on_close is not None:
                    on_close()
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._start_header_timer()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():  # the next request on this connection: the same bound
                self._start_header_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

    return HeaderTimeoutH11
