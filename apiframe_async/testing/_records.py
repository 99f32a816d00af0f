"""What the fake saw: one record per request and per webhook delivery, and live counters."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from apiframe_async.testing._faults import Fault

Auth = Literal["valid", "invalid", "missing"]


@attrs.frozen
class RecordedCall:
    """One request the fake server received, for assertions in tests.

    The API key itself is never stored: `auth` only says whether an `Authorization` header
    was sent and whether it matched.

    Attributes:
        method: the HTTP method.
        path: the request path, e.g. `"/images/<task_id>-0.png"`.
        route: the route it matched: `"/ai-photo-generate"`, `"/fetch"`, `"/images"`, ...;
            None when no route matched.
        body: the parsed JSON object of the body; empty when there was none or it was not
            a JSON object.
        auth: `"valid"`, `"invalid"` (a header with the wrong key) or `"missing"`.
        status: the status code sent, or None when no complete reply was sent (a dropped
            connection, or a request cancelled by the client).
        fault: the injected fault, if any.
        delay: the injected delay in seconds (0.0 when none).
        task_id: the task the request created or looked at, if any.
        created: whether the request created a task (the work was done).
        charged: the credits it charged.
        started_at: when it arrived, on the fake's clock.
        ended_at: when it ended, on the fake's clock.

    Example:
        ```python
        (call,) = fake.calls("/ai-photo-generate")
        assert call.auth == "valid" and call.created and call.charged == 1
        assert not any(c.authorization_sent for c in fake.calls("/images"))
        ```
    """

    method: str
    path: str
    route: str | None
    body: Mapping[str, Any]
    auth: Auth
    status: int | None
    fault: Fault | None
    delay: float
    task_id: str | None
    created: bool
    charged: int
    started_at: float
    ended_at: float

    @property
    def authorization_sent(self) -> bool:
        """Whether the request carried an `Authorization` header at all."""
        return self.auth != "missing"

    @property
    def dropped(self) -> bool:
        """Whether the connection was dropped instead of a reply."""
        return self.fault is not None and self.fault.drops_connection


@attrs.frozen
class WebhookDelivery:
    """One webhook POST the fake made (the secret is not stored).

    Attributes:
        url: the task's `webhook_url`.
        task_id: the task the payload is about.
        payload: the JSON sent, the same as `/fetch` would answer at that step.
        status: the receiver's status code, or None if the POST failed.
        error: why the POST failed (`repr` of the exception), or None.
        sent_at: when it was sent, on the fake's clock.

    Example:
        ```python
        await fake.wait_webhooks()
        assert [d.payload["status"] for d in fake.webhooks(task_id)][-1] == "finished"
        ```
    """

    url: str
    task_id: str
    payload: Mapping[str, Any]
    status: int | None
    error: str | None
    sent_at: float


class Recorder:
    """Thread-safe store of records and in-flight counters (the server may run in a thread)."""

    def __init__(self, max_records: int | None = None) -> None:
        """Start empty; keep only the latest `max_records` of each kind (None: all)."""
        self._lock = threading.Lock()
        self._calls: deque[RecordedCall] = deque(maxlen=max_records)
        self._deliveries: deque[WebhookDelivery] = deque(maxlen=max_records)
        self._in_flight: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()
        self._pending_deliveries = 0

    def enter(self, route: str) -> None:
        """Count a request to `route` as in flight."""
        with self._lock:
            self._in_flight[route] += 1
            self._peak[route] = max(self._peak[route], self._in_flight[route])

    def leave(self, route: str, call: RecordedCall) -> None:
        """Count the request as done and keep its record."""
        with self._lock:
            self._in_flight[route] -= 1
            self._calls.append(call)

    def expect(self, deliveries: int) -> None:
        """Count webhook deliveries queued and not yet made."""
        with self._lock:
            self._pending_deliveries += deliveries

    def delivered(self, delivery: WebhookDelivery) -> None:
        """Keep the record of a webhook delivery."""
        with self._lock:
            self._deliveries.append(delivery)
            self._pending_deliveries -= 1

    def abandon(self, deliveries: int) -> None:
        """Forget deliveries that were queued but never made (the server stopped)."""
        self.expect(-deliveries)

    @property
    def pending_deliveries(self) -> int:
        """Webhook deliveries queued and not yet made."""
        with self._lock:
            return self._pending_deliveries

    def calls(self) -> list[RecordedCall]:
        """A copy of the records, in the order the requests ended."""
        with self._lock:
            return list(self._calls)

    def deliveries(self) -> list[WebhookDelivery]:
        """A copy of the webhook records, in the order they were sent."""
        with self._lock:
            return list(self._deliveries)

    def in_flight(self, route: str) -> int:
        """Requests to `route` now in flight."""
        with self._lock:
            return self._in_flight[route]

    def peak(self, route: str) -> int:
        """The most requests to `route` ever in flight at once."""
        with self._lock:
            return self._peak[route]
