"""Webhook delivery: one POST per event, in order per task, in the background of one loop."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import anyio
import anyio.abc
import httpx

from apiframe_async.testing._records import WebhookDelivery
from apiframe_async.testing._service import WebhookEvent

SECRET_HEADER = "x-webhook-secret"  # noqa: S105 - a header name, not a secret


async def post(
    client: httpx.AsyncClient, event: WebhookEvent, clock: Callable[[], float]
) -> WebhookDelivery:
    """POST one event; a receiver's failure is recorded, never raised."""
    secret = event.webhook.secret
    # UTF-8 bytes: httpx would refuse a non-ASCII secret given as text.
    headers = {SECRET_HEADER.encode(): secret.encode()} if secret is not None else {}
    sent_at = clock()
    status, error = None, None
    try:
        response = await client.post(event.webhook.url, json=event.payload, headers=headers)
    except Exception as exc:  # noqa: BLE001 - whatever the receiver does, the fake carries on
        error = repr(exc)
    else:
        status = response.status_code
    return WebhookDelivery(event.webhook.url, event.task_id, event.payload, status, error, sent_at)


class Runner:
    """Runs webhook deliveries and wall-clock tickers in a task group of one event loop.

    Deliveries of one task go out one after the other, in the order of its steps; different
    tasks go out concurrently.
    """

    def __init__(
        self,
        task_group: anyio.abc.TaskGroup,
        send: Callable[[WebhookEvent], Awaitable[None]],
    ) -> None:
        """Deliver through `send`, in tasks of `task_group`."""
        self._task_group = task_group
        self._send = send
        self._queues: dict[str, deque[WebhookEvent]] = {}
        self._daemons: set[anyio.CancelScope] = set()
        self._idle: anyio.Event | None = None

    def submit(self, events: Iterable[WebhookEvent]) -> None:
        """Queue events for delivery; returns at once."""
        for event in events:
            queue = self._queues.get(event.task_id)
            if queue is not None:
                queue.append(event)
            else:
                self._queues[event.task_id] = deque([event])
                self._task_group.start_soon(self._drain, event.task_id)

    def start_daemon(self, function: Callable[[], Awaitable[None]]) -> None:
        """Run `function` until it returns or the runner closes."""
        self._task_group.start_soon(self._daemon, function)

    async def close(self, grace: float) -> int:
        """Stop the daemons, give deliveries `grace` seconds, cancel the rest.

        Returns how many deliveries were lost.
        """
        for scope in list(self._daemons):
            scope.cancel()
        with anyio.move_on_after(grace):
            if self._queues:
                self._idle = anyio.Event()
                await self._idle.wait()
        lost = sum(len(queue) for queue in self._queues.values())
        self._task_group.cancel_scope.cancel()
        return lost

    async def _drain(self, task_id: str) -> None:
        queue = self._queues[task_id]
        while queue:
            await self._send(queue[0])
            queue.popleft()
        del self._queues[task_id]
        if not self._queues and self._idle is not None:
            self._idle.set()

    async def _daemon(self, function: Callable[[], Awaitable[None]]) -> None:
        with anyio.CancelScope() as scope:
            self._daemons.add(scope)
            try:
                await function()
            finally:
                self._daemons.discard(scope)
