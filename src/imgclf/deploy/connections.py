"""The HTTP/1.1 connections of `imgclf serve`: uvicorn's protocol with a deadline for each request's line and headers
and a least rate for its body, so that no connection holds one of --max-connections for as long as its client likes
(a few that never finished their headers, or trickled their bodies a byte at a time, held every slot: every other
client was answered 503).

Why a rate for the body, not a deadline for the whole of it: a deadline long enough for a 20 MB upload over a slow
link would let a client that trickles a byte at a time hold its slot for all of that time, at no cost; a rate
closes a trickle once its first seconds have passed, lets an upload of any size through on any link faster than
the rate, and makes a slot held for long cost its client that rate in bandwidth.
"""

from __future__ import annotations

import json
import logging

import h11
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol

from imgclf.deploy.access import HEADERS
from imgclf.errors import shown

log = logging.getLogger(__name__)


class _ReadClock(FlowControl):
    """uvicorn's flow control, adding up the time reading was paused: the app not yet taking the body (its buffer
    full, or its turn for a thread not come), which is no fault of the client's."""

    def __init__(self, transport, loop) -> None:
        super().__init__(transport)
        self.loop, self.since, self.total = loop, 0.0, 0.0

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.since = self.loop.time()
        super().pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.total += self.loop.time() - self.since
        super().resume_reading()

    def paused(self) -> float:
        """Seconds reading has been paused, in all, so far."""
        return self.total + (self.loop.time() - self.since if self.read_paused else 0.0)


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with deadlines. A request's line and headers must arrive within `header_timeout`
    seconds of the connection's start or the last response, or the connection is closed; its body must then average
    `min_body_rate` bytes a second once its first `header_timeout` seconds have passed (the time the server was not
    reading it not counted), or it is answered 408 and the connection closed."""

    header_timeout: float  # seconds; these two set by timed_protocol, from serve's options
    min_body_rate: float  # bytes a second

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.flow = _ReadClock(transport, self.loop)  # before any request: each cycle takes this one
        self._answered, self._deadline = None, None
        self._timed, self._body_timer = None, None  # the cycle whose body is timed, and its next check
        self._body_bytes, self._body_began, self._paused_before = 0, 0.0, 0.0
        self._arm()

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _expire(self) -> None:
        if self.cycle is self._answered and not self.transport.is_closing():  # no new request began since
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._body_bytes += len(data)  # counted from the start of a timed body (handle_events resets it)
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._answered and self._deadline is not None:  # a request's headers arrived
            self._deadline.cancel()
            self._deadline = None
        if self.conn.their_state is h11.SEND_BODY and self.cycle is not self._timed:  # a body is to come
            self._timed, self._body_bytes = self.cycle, len(self.cycle.body)  # what came with the headers
            self._body_began, self._paused_before = self.loop.time(), self.flow.paused()
            self._check_body_later(self.header_timeout)
        elif self.conn.their_state is not h11.SEND_BODY and self._body_timer is not None:  # it all came
            self._body_timer.cancel()
            self._body_timer = None

    def _check_body_later(self, seconds: float) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self.loop.call_later(seconds, self._check_body)

    def _check_body(self) -> None:
        self._body_timer = None
        if self.cycle is not self._timed or self.conn.their_state is not h11.SEND_BODY:
            return
        taken = self.loop.time() - self._body_began - (self.flow.paused() - self._paused_before)
        allowed = self.header_timeout + self._body_bytes / self.min_body_rate
        if taken < allowed or self.flow.read_paused:
            self._check_body_later(max(allowed - taken, 0.25))
        elif not self.transport.is_closing():
            self._time_out_body()

    def _time_out_body(self) -> None:
        """408 when the app has not answered yet (its own answer, if it comes, goes nowhere), then closed."""
        message = (f"the request body came slower than {self.min_body_rate / 1000:g} KB/s after its first "
                   f"{self.header_timeout:g} s; send it at least that fast")  # fmt: skip
        cycle = self.cycle
        answering = not cycle.response_started and self.conn.our_state is h11.SEND_RESPONSE
        where = f"{self.scope['method']} {shown(self.scope['path'])}"
        log.warning("%s -> %s: %s", where, "408" if answering else "closed", message)
        if answering:
            cycle.disconnected = True  # the app reads the end of the body now (ClientDisconnect)
            self.scope["state"]["body_timed_out"] = True  # request.state: said here, not again by the app
            body = json.dumps({"error": message}, separators=(",", ":")).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close"), *HEADERS]  # fmt: skip
            response = h11.Response(status_code=408, headers=headers, reason=b"Request Timeout")
            for event in (response, h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            cycle.message_event.set()
        self.transport.close()

    def on_response_complete(self) -> None:
        self._answered = self.cycle
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        for timer in (self._deadline, self._body_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)


def timed_protocol(header_timeout: float, min_body_rate: float) -> type[TimedH11Protocol]:
    """TimedH11Protocol with these limits (uvicorn makes one protocol a connection from the class it is given):
    `header_timeout` in seconds, `min_body_rate` in bytes a second."""
    limits = {"header_timeout": header_timeout, "min_body_rate": min_body_rate}
    return type("TimedH11Protocol", (TimedH11Protocol,), limits)
