"""uvicorn's httptools protocol with the limits it lacks: header size and read/idle timeouts.

uvicorn (httptools) buffers a request's headers however large they grow and waits for a request
forever: a 100 MB header is accepted, and a client that sends half a request (or a body shorter
than its Content-Length) holds a connection and its memory for as long as it likes. Here:

  header bytes   counted as they arrive; past `max_header_bytes` before the headers are
                 complete -> 431 and the connection is closed (nothing reaches the app);
  idle_timeout   a new connection that sends no request in this time is closed;
  read_timeout   from a request's first byte, the whole request (headers and body) must arrive
                 within this time -> 408 and close. The timer stops once the request is read:
                 the app's own work is not limited here.

Keep-alive between requests stays uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger("reasonrec.serve")


class LimitedHttpTools(HttpToolsProtocol):
    max_header_bytes = 16 * 1024
    idle_timeout = 10.0
    read_timeout = 10.0

    @classmethod
    def with_limits(cls, max_header_bytes: int, idle_timeout: float, read_timeout: float) -> type:
        return type(cls.__name__, (cls,), {"max_header_bytes": max_header_bytes, "idle_timeout": idle_timeout,
                                           "read_timeout": read_timeout})

    def connection_made(self, transport):
        super().connection_made(transport)
        self._in_headers, self._header_bytes, self._refused = True, 0, False
        self._reading = False
        self._timer = None
        self._arm(self.idle_timeout)

    def connection_lost(self, exc):
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float):
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self):
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self):
        self._timer = None
        if self.transport.is_closing():
            return
        if self._reading:                    # part of a request came, not all of it
            self._refuse(408, "request not received in time")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str):
        self._refused = True
        self._disarm()
        body = ('{"error": "%s"}' % message).encode()
        self.transport.write(b"".join([STATUS_LINE[status], b"content-type: application/json\r\n",
                                       b"content-length: ", str(len(body)).encode(), b"\r\n",
                                       b"connection: close\r\n\r\n", body]))
        self.transport.close()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True          # the app, if it started, sees a disconnect
            self.cycle.message_event.set()

    def data_received(self, data: bytes):
        if self._refused:
            return
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._in_headers and self._header_bytes > self.max_header_bytes and not self._refused:
            log.warning("refused a request whose headers exceed %d bytes", self.max_header_bytes)
            self._refuse(431, f"request headers larger than {self.max_header_bytes} bytes")

    def send_400_response(self, msg: str):
        if not self._refused:
            super().send_400_response(msg)

    # parser callbacks
    def on_message_begin(self):
        super().on_message_begin()
        self._reading = True
        self._arm(self.read_timeout)

    def on_headers_complete(self):
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self):
        super().on_message_complete()
        self._reading, self._in_headers, self._header_bytes = False, True, 0
        self._disarm()
