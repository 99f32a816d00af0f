"""A bulk job's journal: what was asked, what came back, kept in SQLite so a job can resume.

Each paid request is written down right before its bytes leave (`sending`), when the
server accepts it with a task to wait on (`accepted`, with the task id), and when it ends:
`done` with the result, or the state the error leaves it in, as `_charges.charge_of`
decides for the retry rules too:

- `not_charged`: it provably never reached the server, or was refused before any work
  (connection refused, 400, 401, 402, 403, 429, 503), or the job stopped before sending it;
- `uncertain`: bytes may have reached the server and no task id came back (a timeout, a
  drop, a 500/502/504, a 200 that could not be read);
- `accepted`: the task exists; a failed poll or a passed deadline only ended the wait.

Run the same job again with the same journal, and:

- `done` items are not sent again: their recorded results are replayed (or skipped);
- `accepted` items are not sent again: the next run waits on their task;
- `not_charged` items are sent again;
- `sending` (a run stopped mid-request) and `uncertain` items may have been charged and
  nothing can tell: the `on_uncertain` policy decides (`skip`, the default, reports
  them; `resend` sends them again).

A journal is one file: SQLite's rollback journal with full sync, so every record is in
the main file once written (a copy of it alone holds everything), and an exclusive lock,
so one journal serves one run at a time.

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
from typing import Any, Final, Literal, Protocol, Self

import anyio
import anyio.to_thread
import attrs

from ._charges import Charge, charge_of
from ._errors import (
    ApiframeError,
    JournalError,
    JournalInUseError,
    NotSentError,
    UncertainSubmissionError,
)
from ._fanout import Replay
from ._http import BeforeSend, TimeoutTypes
from ._models import GenerateRequest, Generation, Task, TaskStatus

UncertainPolicy = Literal["skip", "resend"]
"""What a resumed job does with requests that may or may not have been charged."""

ReplayPolicy = Literal["yield", "skip"]
"""What a resumed job does with requests already done: yield their results, or not."""

State = Literal["sending", "accepted", "done", "uncertain", "not_charged"]

#: The schema's version, in SQLite's `user_version`; 0 is the 0.1 release's journal.
SCHEMA_VERSION: Final = 2

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT NOT NULL,
    occurrence INTEGER NOT NULL,
    position INTEGER NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('sending', 'accepted', 'done', 'uncertain', 'not_charged')),
    task_id TEXT,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (key, occurrence)
);
"""

_STATE_OF_CHARGE: Final[Mapping[Charge, State]] = {
    Charge.NOT_CHARGED: "not_charged",
    Charge.UNCERTAIN: "uncertain",
    Charge.ACCEPTED: "accepted",
}

# Errors a 0.1 journal recorded as `failed` that prove the request never left, or was
# refused before any work. Anything else it called `failed` may have been charged.
_V1_NOT_CHARGED_TYPES: Final = frozenset(
    {
        "RequestValidationError",
        "BadRequestError",
        "AuthenticationError",
        "PermissionDeniedError",
        "NotFoundError",
        "RateLimitError",
    }
)


class Submit(Protocol):
    """The paid step of a generation: POST it, return the server's answer."""

    def __call__(
        self,
        request: GenerateRequest,
        /,
        *,
        timeout: TimeoutTypes = None,
        before_send: BeforeSend | None = None,
    ) -> Awaitable[Task]:
        """Send `request`, awaiting `before_send` right before each attempt's bytes leave."""
        ...


@attrs.frozen
class Entry:
    """What the journal knows of one item."""

    state: State
    result: Generation | None
    error: str | None
    task_id: str | None = None


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
    """One SQLite file recording a bulk job, safe to reopen after a crash; one run at a time.

    Use it through `generate_many(..., journal=path)`; open it yourself to inspect a job.
    While it is open, no other run (in this process or another) can open it. It is one
    file: copy, move or back it up alone once no run has it open.

    Example:
        ```python
        async with client.generate_many(requests, journal="job.sqlite") as outcomes:
            ...
        # killed? run the same code again: done prompts are not paid for twice.
        ```

    Raises:
        JournalInUseError: Another run has the journal open.
        JournalError: The file is not a journal, is damaged, or comes from a newer version.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (or create) the journal at `path`, and hold it for this run alone."""
        self.path = Path(path)
        try:
            # No busy wait: a journal in use is refused at once, before anything is sent.
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=0
            )
        except sqlite3.Error as exc:
            raise JournalError(str(self.path), f"cannot be opened: {exc}") from exc
        try:
            self._prepare()
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise JournalInUseError(str(self.path)) from exc
            raise JournalError(str(self.path), f"cannot be used: {exc}") from exc
        except (sqlite3.Error, JournalError) as exc:
            self._db.close()
            if isinstance(exc, JournalError):
                raise
            raise JournalError(str(self.path), f"cannot be used: {exc}") from exc
        self._lock = anyio.Lock()
        self._occurrences: dict[str, int] = {}

    def _prepare(self) -> None:
        db = self._db
        # Held from the first transaction to close(): one journal, one run.
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("COMMIT")
        # A rollback journal, not WAL: a committed record is in the main file itself, so
        # the file alone (copied, moved, backed up) never forgets what was sent. A 0.1
        # journal in WAL mode is checkpointed into its main file here.
        db.execute("PRAGMA journal_mode=DELETE")
        # FULL: a row written before a request is on disk before the request leaves.
        db.execute("PRAGMA synchronous=FULL")
        (check,) = db.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise JournalError(
                str(self.path),
                f"is damaged ({check}); if it was copied while a run was writing, copy it "
                "again together with its -journal file, with no run open",
            )
        (version,) = db.execute("PRAGMA user_version").fetchone()
        has_items = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'items'"
        ).fetchone()
        if version > SCHEMA_VERSION:
            raise JournalError(
                str(self.path), f"was written by a newer apiframe-async (schema {version})"
            )
        if version < SCHEMA_VERSION and has_items:
            self._migrate_v1()
        elif version < SCHEMA_VERSION:
            db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

    def _migrate_v1(self) -> None:
        """Bring a 0.1 journal to this schema, assuming the worst where it cannot tell."""
        db = self._db
        db.execute("BEGIN")
        try:
            rows = db.execute(
                "SELECT key, occurrence, position, request, state, result, error, attempts, "
                "updated_at FROM items"
            ).fetchall()
            db.execute("DROP TABLE items")
            db.execute(_SCHEMA)
            db.executemany(
                "INSERT INTO items (key, occurrence, position, request, state, result, "
                "error, attempts, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*row[:4], _v1_state(row[4], row[6]), *row[5:]) for row in rows],
            )
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

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
            try:
                return await anyio.to_thread.run_sync(run)
            except sqlite3.Error as exc:
                raise JournalError(str(self.path), f"cannot be written: {exc}") from exc

    async def lookup(self, key: str, occurrence: int) -> Entry | None:
        """What a previous run recorded for this item, if anything."""
        rows = await self._run(
            "SELECT state, result, error, task_id FROM items WHERE key = ? AND occurrence = ?",
            key,
            occurrence,
        )
        if not rows:
            return None
        state, result, error, task_id = rows[0]
        return Entry(state, _result_from(result) if result else None, error, task_id)

    async def begin(
        self, key: str, occurrence: int, position: int, request: GenerateRequest
    ) -> None:
        """Record, durably, that this request's bytes are about to leave."""
        await self._run(
            "INSERT INTO items (key, occurrence, position, request, state, attempts, updated_at) "
            "VALUES (?, ?, ?, ?, 'sending', 1, ?) "
            "ON CONFLICT (key, occurrence) DO UPDATE SET state = 'sending', "
            "position = excluded.position, attempts = attempts + 1, "
            "error = NULL, updated_at = excluded.updated_at",
            key,
            occurrence,
            position,
            _request_json(request),
            time.time(),
        )

    async def accept(self, key: str, occurrence: int, task_id: str) -> None:
        """Record that the server accepted the request as task `task_id`: never resend it."""
        await self._run(
            "UPDATE items SET state = 'accepted', task_id = ?, updated_at = ? "
            "WHERE key = ? AND occurrence = ?",
            task_id,
            time.time(),
            key,
            occurrence,
        )

    async def not_sent(
        self,
        key: str,
        occurrence: int,
        position: int,
        request: GenerateRequest,
        error: ApiframeError,
    ) -> None:
        """Record that this run did not send the request; whatever an earlier run said stays."""
        await self._run(
            "INSERT INTO items (key, occurrence, position, request, state, error, attempts, "
            "updated_at) VALUES (?, ?, ?, ?, 'not_charged', ?, 0, ?) "
            "ON CONFLICT (key, occurrence) DO NOTHING",
            key,
            occurrence,
            position,
            _request_json(request),
            _error_json(error),
            time.time(),
        )

    async def finish(
        self, key: str, occurrence: int, result: Generation | None, error: ApiframeError | None
    ) -> None:
        """Record how the request ended: its result, or its error and what it may have cost."""
        if error is None:
            assert result is not None  # noqa: S101 -- one of the two is given
            state, result_text, error_text = "done", _result_json(result), None
        else:
            state = _STATE_OF_CHARGE[charge_of(error)]
            result_text, error_text = None, _error_json(error)
        # An accepted task keeps its id: a later wait needs it. Only a row this run sent
        # (or is waiting on) changes: a failure before the bytes left (no slot in time, a
        # budget) leaves what an earlier run recorded, an uncertain send above all.
        await self._run(
            "UPDATE items SET state = ?, result = ?, error = ?, updated_at = ?, "
            "task_id = COALESCE(?, task_id) WHERE key = ? AND occurrence = ? "
            "AND state IN ('sending', 'accepted')",
            state,
            result_text,
            error_text,
            time.time(),
            getattr(error, "task_id", None) if error is not None else None,
            key,
            occurrence,
        )


def _request_json(request: GenerateRequest) -> str:
    return json.dumps(attrs.asdict(request))


def _v1_state(state: str, error_text: str | None) -> State:
    """The state of a 0.1 row; its `failed` lumped refusals with what may have been charged."""
    if state != "failed":
        return "done" if state == "done" else "sending" if state == "sending" else "uncertain"
    try:
        error = json.loads(error_text or "{}")
        kind, message = str(error.get("type")), str(error.get("message"))
    except (ValueError, AttributeError):
        return "uncertain"
    never_left = kind in {"APIConnectionError", "APITimeoutError"} and (
        "may have reached the server" not in message
    )
    pushed_back = kind == "ServerError" and message.startswith("503 ")
    if kind in _V1_NOT_CHARGED_TYPES or never_left or pushed_back:
        return "not_charged"
    return "uncertain"


@attrs.frozen
class Claim:
    """An item's identity in the journal, and its position in this run's input."""

    key: str
    occurrence: int
    position: int


class JournaledWork:
    """A bulk job's work, recorded in a journal before, during and after each paid request."""

    def __init__(
        self,
        journal: Journal,
        submit: Submit,
        complete: Callable[[Task | str], Awaitable[Generation]],
        *,
        on_uncertain: UncertainPolicy,
        key: Callable[[GenerateRequest], str] | None = None,
    ) -> None:
        """Drive the two steps of a generation: `submit` (paid) and `complete` (free).

        `submit(request, before_send=...)` POSTs and returns the server's answer;
        `complete(task or task id)` waits for its result. `key` gives an item's identity
        (default: its content's hash).
        """
        self._journal = journal
        self._submit = submit
        self._complete = complete
        self._on_uncertain = on_uncertain
        self._key = key

    def claim(self, position: int, request: GenerateRequest) -> Claim:
        """The item's identity; call in input order (see `Journal.identify`)."""
        key, occurrence = self._journal.identify(request, self._key(request) if self._key else None)
        return Claim(key, occurrence, position)

    async def not_sent(self, request: GenerateRequest, claim: Claim, error: NotSentError) -> None:
        """Record an item the job stopped before sending: a rerun sends it."""
        await self._journal.not_sent(claim.key, claim.occurrence, claim.position, request, error)

    async def __call__(
        self, request: GenerateRequest, claim: Claim
    ) -> Generation | Replay[Generation]:
        """The recorded result of an item done before, or the result of sending it now.

        Raises:
            UncertainSubmissionError: The item may have been charged by an earlier run,
                and the policy is `skip`.
        """
        journal = self._journal
        entry = await journal.lookup(claim.key, claim.occurrence)
        if entry is not None and entry.state == "done" and entry.result is not None:
            return Replay(entry.result)
        if entry is not None and entry.state == "accepted" and entry.task_id:
            # Accepted by an earlier run: only its task is waited on, it is never resent.
            return await self._finish(claim, entry.task_id)
        # Anything else an earlier run left, but a provable not-charged, may have been paid.
        uncertain = entry is not None and entry.state != "not_charged"
        if uncertain and self._on_uncertain == "skip":
            assert entry is not None  # noqa: S101 -- uncertain implies an entry
            detail = "in flight when a run stopped" if entry.state == "sending" else "no answer"
            raise UncertainSubmissionError(claim.key, detail)

        async def before_send() -> None:
            await journal.begin(claim.key, claim.occurrence, claim.position, request)

        try:
            task = await self._submit(request, before_send=before_send)
        except ApiframeError as exc:
            await journal.finish(claim.key, claim.occurrence, None, exc)
            raise
        if not task.is_terminal:
            await journal.accept(claim.key, claim.occurrence, task.task_id)
        return await self._finish(claim, task)

    async def _finish(self, claim: Claim, task: Task | str) -> Generation:
        try:
            result = await self._complete(task)
        except ApiframeError as exc:
            with anyio.CancelScope(shield=True):
                await self._journal.finish(claim.key, claim.occurrence, None, exc)
            raise
        # Shielded: a cancel arriving now must not leave a paid result unrecorded.
        with anyio.CancelScope(shield=True):
            await self._journal.finish(claim.key, claim.occurrence, result, None)
        return result
