"""A bulk job's journal: what was asked, what came back, kept in SQLite so a job can resume.

Each paid request is written down before it is sent (`sending`) and again when its answer
comes (`done` with the result, `failed` with the error, or `uncertain` when the request may
have reached the server and no answer came). The file is in WAL mode with full sync, so a
kill at any instant leaves it consistent: a row says `sending` or it says how it ended.

Run the same job again with the same journal, and:

- `done` items are not sent again: their recorded results are replayed (or skipped);
- `failed` items are sent again: they failed without being charged;
- `sending` and `uncertain` items may have been charged, and a synchronous generation gives
  no task id until it answers, so nothing can tell: the `on_uncertain` policy decides
  (`skip`, the default, reports them; `resend` sends them again).

An item's identity is its request's content (or a key you give) plus its occurrence: two
identical prompts in one job are two items.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, Self

import anyio
import anyio.to_thread
import attrs

from ._errors import APIConnectionError, ApiframeError, UncertainSubmissionError
from ._fanout import Replay
from ._models import GenerateRequest, Generation, TaskStatus

UncertainPolicy = Literal["skip", "resend"]
"""What a resumed job does with requests that may or may not have been charged."""

ReplayPolicy = Literal["yield", "skip"]
"""What a resumed job does with requests already done: yield their results, or not."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT NOT NULL,
    occurrence INTEGER NOT NULL,
    position INTEGER NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'done', 'failed', 'uncertain')),
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (key, occurrence)
);
"""


@attrs.frozen
class Entry:
    """What the journal knows of one item."""

    state: Literal["sending", "done", "failed", "uncertain"]
    result: Generation | None
    error: str | None


def request_key(request: GenerateRequest) -> str:
    """The stable identity of a request's content: a hash of its fields."""
    canonical = json.dumps(attrs.asdict(request), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _result_json(result: Generation) -> str:
    return json.dumps(
        {
            "task_id": result.task_id,
            "status": str(result.status),
            "image_urls": list(result.image_urls),
            "task_type": result.task_type,
            "extra": dict(result.extra),
        }
    )


def _result_from(text: str) -> Generation:
    data = json.loads(text)
    return Generation(
        task_id=data["task_id"],
        status=TaskStatus(data["status"]),
        image_urls=tuple(data["image_urls"]),
        task_type=data["task_type"],
        extra=data["extra"],
    )


def _error_json(error: BaseException) -> str:
    return json.dumps({"type": type(error).__name__, "message": str(error)})


class Journal:
    """One SQLite file recording a bulk job, safe to reopen after a crash.

    Use it through `generate_many(..., journal=path)`; open it yourself to inspect a job.

    Example:
        ```python
        async with client.generate_many(requests, journal="job.sqlite") as outcomes:
            ...
        # killed? run the same code again: done prompts are not paid for twice.
        ```
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (or create) the journal at `path`."""
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a row written before a request is on disk before the request leaves.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = anyio.Lock()
        self._occurrences: dict[str, int] = {}

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    def __enter__(self) -> Self:
        """Use the journal in a `with` block; it is closed at the end."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the file."""
        self.close()

    def identify(self, request: GenerateRequest, key: str | None = None) -> tuple[str, int]:
        """The item's identity: its key and which occurrence of that key it is in this run.

        Call in input order: the n-th identical request of a run is the n-th of the last.
        """
        key = key or request_key(request)
        occurrence = self._occurrences.get(key, 0)
        self._occurrences[key] = occurrence + 1
        return key, occurrence

    def counts(self) -> Mapping[str, int]:
        """How many items are in each state."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()
        return dict(rows)

    async def _run(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:  # noqa: ANN401
        def run() -> list[tuple[Any, ...]]:
            return self._db.execute(sql, params).fetchall()

        async with self._lock:
            return await anyio.to_thread.run_sync(run)

    async def lookup(self, key: str, occurrence: int) -> Entry | None:
        """What a previous run recorded for this item, if anything."""
        rows = await self._run(
            "SELECT state, result, error FROM items WHERE key = ? AND occurrence = ?",
            key,
            occurrence,
        )
        if not rows:
            return None
        state, result, error = rows[0]
        return Entry(state, _result_from(result) if result else None, error)

    async def begin(
        self, key: str, occurrence: int, position: int, request: GenerateRequest
    ) -> None:
        """Record, durably, that this request is about to be sent."""
        await self._run(
            "INSERT INTO items (key, occurrence, position, request, state, attempts, updated_at) "
            "VALUES (?, ?, ?, ?, 'sending', 1, ?) "
            "ON CONFLICT (key, occurrence) DO UPDATE SET state = 'sending', "
            "position = excluded.position, attempts = attempts + 1, "
            "error = NULL, updated_at = excluded.updated_at",
            key,
            occurrence,
            position,
            json.dumps(attrs.asdict(request)),
            time.time(),
        )

    async def finish(
        self, key: str, occurrence: int, result: Generation | None, error: ApiframeError | None
    ) -> None:
        """Record how the request ended: its result, or its error (`uncertain` if charged)."""
        if error is None:
            assert result is not None  # noqa: S101 -- one of the two is given
            state, result_text, error_text = "done", _result_json(result), None
        else:
            maybe_charged = isinstance(error, APIConnectionError) and error.may_have_been_submitted
            state = "uncertain" if maybe_charged else "failed"
            result_text, error_text = None, _error_json(error)
        await self._run(
            "UPDATE items SET state = ?, result = ?, error = ?, updated_at = ? "
            "WHERE key = ? AND occurrence = ?",
            state,
            result_text,
            error_text,
            time.time(),
            key,
            occurrence,
        )


@attrs.frozen
class Claim:
    """An item's identity in the journal, and its position in this run's input."""

    key: str
    occurrence: int
    position: int


class JournaledWork:
    """A bulk job's work, recorded in a journal before and after each paid request."""

    def __init__(
        self,
        journal: Journal,
        work: Callable[[GenerateRequest], Awaitable[Generation]],
        *,
        on_uncertain: UncertainPolicy,
        key: Callable[[GenerateRequest], str] | None = None,
    ) -> None:
        """Wrap `work`; `key` gives an item's identity (default: its content's hash)."""
        self._journal = journal
        self._work = work
        self._on_uncertain = on_uncertain
        self._key = key

    def claim(self, position: int, request: GenerateRequest) -> Claim:
        """The item's identity; call in input order (see `Journal.identify`)."""
        key, occurrence = self._journal.identify(request, self._key(request) if self._key else None)
        return Claim(key, occurrence, position)

    async def __call__(
        self, request: GenerateRequest, claim: Claim
    ) -> Generation | Replay[Generation]:
        """The recorded result of an item done before, or the result of sending it now.

        Raises:
            UncertainSubmissionError: The item may have been charged by an earlier run,
                and the policy is `skip`.
        """
        entry = await self._journal.lookup(claim.key, claim.occurrence)
        if entry is not None and entry.state == "done" and entry.result is not None:
            return Replay(entry.result)
        uncertain = entry is not None and entry.state in ("sending", "uncertain")
        if uncertain and self._on_uncertain == "skip":
            assert entry is not None  # noqa: S101 -- uncertain implies an entry
            detail = "in flight when a run stopped" if entry.state == "sending" else "no answer"
            raise UncertainSubmissionError(claim.key, detail)
        await self._journal.begin(claim.key, claim.occurrence, claim.position, request)
        try:
            result = await self._work(request)
        except ApiframeError as exc:
            with anyio.CancelScope(shield=True):
                await self._journal.finish(claim.key, claim.occurrence, None, exc)
            raise
        # Shielded: a cancel arriving now must not leave a paid result unrecorded.
        with anyio.CancelScope(shield=True):
            await self._journal.finish(claim.key, claim.occurrence, result, None)
        return result
