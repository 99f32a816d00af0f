"""Webhooks: check the secret, parse the task, deliver it to whoever waits for it.

APIFRAME POSTs progress and the final result of an upload or a training to the
`webhook_url` given with it, with the `webhook_secret` echoed in the `x-webhook-secret`
header. There is no signature: verifying is a constant-time comparison of that header.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final

from ._errors import RequestValidationError, ResponseValidationError
from ._models import Task
from ._wire import Wire

logger = logging.getLogger("apiframe_async")

WEBHOOK_SECRET_HEADER: Final = "x-webhook-secret"  # noqa: S105 -- a header's name

#: The largest webhook body read; a task result is a few hundred bytes.
MAX_WEBHOOK_BODY: Final = 1024 * 1024

_wire = Wire()

Headers = Mapping[str, str] | Iterable[tuple[bytes, bytes]] | Iterable[tuple[str, str]]
"""Request headers: a mapping (Starlette's, a dict) or ASGI's list of byte pairs."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _header_bytes(headers: Headers, name: str) -> tuple[bytes, ...] | None:
    pairs: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in pairs:
        key_text = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if key_text.lower() == name:
            if isinstance(value, bytes):
                return (value,)
            text = str(value)
            as_sent = (text.encode("latin-1"),) if _latin1(text) else ()
            return (*as_sent, text.encode())
    return None


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def verify_webhook(headers: Headers, secret: str) -> bool:
    """Whether a webhook call carries `secret` in its `x-webhook-secret` header.

    The comparison takes the same time however much of the secret matches.

    Examples:
        >>> verify_webhook({"x-webhook-secret": "s3cret"}, "s3cret")
        True
        >>> verify_webhook({}, "s3cret")
        False
    """
    given = _header_bytes(headers, WEBHOOK_SECRET_HEADER)
    if given is None:
        return False
    # Header bytes of a non-ASCII secret are its UTF-8 (as httpx and most senders write
    # them); frameworks hand them over decoded as latin-1, or already as text.
    expected = secret.encode()
    return any(hmac.compare_digest(candidate, expected) for candidate in given)


def parse_webhook(body: bytes | str | Mapping[str, Any]) -> Task:
    """The task a webhook call reports, in the same shape `fetch()` returns.

    Raises:
        ResponseValidationError: The body is not JSON, or not a task.
    """
    if isinstance(body, Mapping):
        return _wire.task(body)
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ResponseValidationError([f"$: not JSON ({exc})"], body=text) from exc
    return _wire.task(data, body=text)


class WebhookReceiver:
    """Receives APIFRAME webhooks: checks the secret, parses the task, hands it on.

    It is an ASGI app (mount it in Starlette or FastAPI, or serve it alone) and has
    `handle()` for any other framework. Give it to `AsyncApiframe(webhooks=...)` and that
    client's waits end as soon as the webhook brings the result, and its uploads and
    trainings send `url` and `secret` unless told otherwise.

    Example:
        ```python
        receiver = WebhookReceiver(secret=SECRET, url="https://me.example/apiframe")
        app = FastAPI()
        # A route, not app.mount(): a mount answers "/apiframe" with a redirect.
        app.add_route("/apiframe", receiver, methods=["POST"])

        async with AsyncApiframe(webhooks=receiver) as client:
            training = await client.train(prepared.task_id)
            trained = await client.wait(training.task_id)  # webhook or poll, first wins
        ```

    Args:
        secret: The shared secret; never shown in a repr or a log.
        url: The public URL the receiver is served at, sent as `webhook_url`.
        on_task: Called (sync or async) with each verified task.
    """

    def __init__(
        self,
        secret: str,
        *,
        url: str | None = None,
        on_task: Callable[[Task], object] | None = None,
    ) -> None:
        """Configure the receiver."""
        if not secret:
            raise RequestValidationError("secret", "must be a non-empty string", allowed="str")
        self._secret = secret
        self.url = url
        self._on_task = on_task
        self._subscribers: list[Callable[[Task], None]] = []

    def __repr__(self) -> str:
        """Name the URL, never the secret."""
        return f"<WebhookReceiver url={self.url!r}>"

    @property
    def secret(self) -> str:
        """The shared secret (for the requests that ask for webhooks)."""
        return self._secret

    def subscribe(self, deliver: Callable[[Task], None]) -> Callable[[], None]:
        """Call `deliver` with each verified task; returns the function that stops it."""
        self._subscribers.append(deliver)
        return lambda: self._subscribers.remove(deliver)

    async def handle(self, headers: Headers, body: bytes | str) -> int:
        """Verify, parse and deliver one webhook call; returns the HTTP status to answer.

        401 for a wrong or missing secret, 400 for a body that is not a task, 200 when
        the task was delivered.
        """
        if not verify_webhook(headers, self._secret):
            logger.warning("webhook refused: wrong or missing %s header", WEBHOOK_SECRET_HEADER)
            return 401
        try:
            task = parse_webhook(body)
        except ResponseValidationError as exc:
            logger.warning("webhook refused: %s", exc)
            return 400
        for deliver in list(self._subscribers):
            deliver(task)
        if self._on_task is not None:
            result = self._on_task(task)
            if inspect.isawaitable(result):
                await result
        return 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point: POST only, bodies up to `MAX_WEBHOOK_BODY`."""
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _respond(send, 405)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_WEBHOOK_BODY:
                await _respond(send, 413)
                return
            if not message.get("more_body", False):
                break
        await _respond(send, await self.handle(scope["headers"], bytes(body)))


async def _respond(send: Send, status: int) -> None:
    payload = json.dumps({"ok": status == 200}).encode()  # noqa: PLR2004
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})
