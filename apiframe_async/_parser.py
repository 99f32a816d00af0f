"""HTTP/1.1 response framing with llhttp (through httptools), stricter than llhttp alone.

llhttp, the parser of Node.js and uvicorn, refuses bare LF line endings, obs-fold, NUL and
other control bytes in headers, Content-Length overflows and repeats, and Content-Length
beside Transfer-Encoding. On top of it this module refuses what llhttp accepts but a client
must not: a status below 100, any Transfer-Encoding but one `chunked`, and a head larger than
`MAX_HEAD` bytes however the packets split it. Each refusal is an
`httpx.RemoteProtocolError`, raised as soon as the offending bytes arrive.

llhttp does not know the request method, so a HEAD response is framed by the transport.
"""

from __future__ import annotations

import httptools
import httpx

__all__ = ["MAX_HEAD", "ResponseParser"]

#: Bytes allowed for a response's status line and headers together, 1xx heads included.
MAX_HEAD = 64 * 1024
_MIN_STATUS = 100
_INTERIM = range(100, 200)
_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
_TE_SIZE = len(b"transfer-encoding")
_CONNECTION_SIZE = len(b"connection")


def _says_close(value: bytes) -> bool:
    return b"close" in (token.strip(b" \t") for token in value.lower().split(b","))


class _SecondResponse(Exception):  # noqa: N818 - a signal out of a parser callback, no error
    """Bytes after the final response began another one: parsing stops there."""


class ResponseParser:
    """Feeds one response's bytes to llhttp and collects its head and body.

    Args:
        request: The request this is the answer to, for the errors raised.
        max_body: Body bytes allowed on the wire; more is refused while it streams.
    """

    __slots__ = (
        "_chunks",
        "_head_bytes",
        "_max_body",
        "_parser",
        "_request",
        "_te",
        "body_bytes",
        "closes",
        "complete",
        "extra",
        "head_done",
        "headers",
        "reason",
        "status",
        "version",
    )

    def __init__(self, request: httpx.Request, max_body: int | None) -> None:
        self._request = request
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: list[bytes] = []
        self._head_bytes = 0
        self._te = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.reason = b""
        self.version = b"HTTP/1.1"
        self.closes = False
        self.complete = False
        # Bytes after the final response: the server spoke out of turn, so the
        # connection must not be reused.
        self.extra = False
        self.body_bytes = 0
        #: Whether the final (non-1xx) head has been read.
        self.head_done = False

    def feed(self, data: bytes) -> None:
        """Parse `data`, the next bytes from the connection.

        Raises:
            httpx.RemoteProtocolError: The bytes break HTTP/1.1 or our limits.
        """
        if self.complete:
            self.extra = True
            return
        if not self.head_done:
            # Counted per feed, before parsing: whatever the packet boundaries, a head
            # that never ends is refused once MAX_HEAD bytes came without a complete head.
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _SecondResponse):
                return
            if isinstance(cause, httpx.RemoteProtocolError):
                raise cause from None
            raise self._error(f"malformed response: {cause or exc}") from exc
        except httptools.HttpParserError as exc:
            self._refuse_unless_complete(exc)
        if not self.head_done and self._head_bytes > MAX_HEAD:
            raise self._error(f"response head longer than {MAX_HEAD} bytes")

    def _refuse_unless_complete(self, exc: httptools.HttpParserError) -> None:
        if not self.complete:
            raise self._error(f"malformed response: {exc}") from exc
        self.extra = True  # garbage after a complete response

    def take_body(self) -> bytes:
        """The body bytes parsed since the last call."""
        chunks, self._chunks = self._chunks, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def finish_at_eof(self) -> None:
        """The server closed the connection: end a close-delimited body, or refuse."""
        if self.complete:
            return
        if self.head_done and not self._framed():
            self.complete = True
            self._end()
            return
        what = "body" if self.head_done else "head"
        raise self._error(f"server disconnected before the end of the response {what}")

    def _end(self) -> None:
        # llhttp holds our callbacks, so it and we are a reference cycle: unbroken, every
        # response would wait for the garbage collector, its request with it, and those
        # collections cost a request at 256 in flight a seventh of its time. Nothing is fed
        # to llhttp after the end (`feed` only notes extra bytes).
        del self._parser

    def _framed(self) -> bool:
        return self._te > 0 or any(name.lower() == b"content-length" for name, _ in self.headers)

    def _error(self, message: str) -> httpx.RemoteProtocolError:
        return httpx.RemoteProtocolError(message, request=self._request)

    # llhttp callbacks (httptools looks them up by name).

    def on_message_begin(self) -> None:
        if self.head_done:
            self.extra = True
            raise _SecondResponse
        self.headers = []
        self._te = 0

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        # Lengths first: lower-casing every name costs more than the rest of this.
        size = len(name)
        if size == _TE_SIZE and name.lower() == b"transfer-encoding":
            # Anything but one `chunked` (gzip, "chunked, chunked", two headers) frames a
            # body we cannot delimit safely: refuse it rather than read until close.
            self._te += 1
            if self._te > 1 or value.strip(b" \t").lower() != b"chunked":
                raise self._error(f"unsupported Transfer-Encoding {value!r}")
        elif size == _CONNECTION_SIZE and name.lower() == b"connection" and _says_close(value):
            self.closes = True  # in any Connection header, not only the last

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < _MIN_STATUS:
            raise self._error(f"invalid status code {status}")
        self.status = status
        if status in _INTERIM:
            return
        version = self._parser.get_http_version()
        if version not in _VERSIONS:
            raise self._error(f"unsupported HTTP version {version!r}")
        self.version = _VERSIONS[version]
        self.head_done = True
        if not self._parser.should_keep_alive():
            self.closes = True
        self._check_length()

    def _check_length(self) -> None:
        if self._max_body is None:
            return
        for name, value in self.headers:
            if name.lower() == b"content-length" and int(value) > self._max_body:
                raise self._error(
                    f"response of {int(value)} bytes is over the limit of {self._max_body}"
                )

    def on_body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self._max_body is not None and self.body_bytes > self._max_body:
            raise self._error(f"response body over the limit of {self._max_body} bytes")
        self._chunks.append(data)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self._end()
