"""The main job: prompts in, a folder of photos and a JSONL manifest out.

Shared by the `apiframe generate-many` command and by anyone who wants the same job from
Python. Every prompt gets exactly one manifest line: its task and files, or its error.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from typing import IO, Any

import anyio
import attrs
import httpx
from anyio.abc import TaskGroup

from ._client import AsyncApiframe
from ._download import SavedPhotos, save_photos, saved_so_far
from ._errors import ApiframeError, BudgetExceededError, RequestValidationError
from ._fanout import Outcome, Progress, RequestLike, as_request
from ._journal import UncertainPolicy
from ._models import GenerateRequest, Generation

#: Photos saved at once while generations go on.
DOWNLOAD_CONCURRENCY = 8


def read_prompts(
    lines: Iterable[str], defaults: Mapping[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Requests from lines of text: a plain prompt per line, or a JSON object of fields.

    Blank lines and lines starting with `#` are skipped. `defaults` fill the fields a
    line does not set (typically `training_id`).

    Examples:
        >>> lines = ["a portrait", '{"prompt": "a hat", "seed": 3}']
        >>> for fields in read_prompts(lines, {"training_id": "t"}):
        ...     print(fields)
        {'training_id': 't', 'prompt': 'a portrait'}
        {'training_id': 't', 'prompt': 'a hat', 'seed': 3}

    Raises:
        RequestValidationError: A line that starts with `{` is not a JSON object.
    """
    for _number, fields in _numbered(lines, defaults):
        yield fields


def load_prompts(
    lines: Iterable[str], defaults: Mapping[str, Any] | None = None
) -> list[GenerateRequest]:
    """Every request of `lines` (as `read_prompts` reads them), each checked, before any is sent.

    A job that starts only once its whole input is known good never pays for the first
    prompts of a file whose line 9,000 has a typo.

    Raises:
        RequestValidationError: A line is not valid JSON, or a field of it is invalid;
            the error names the line's number.
    """
    requests = []
    for number, fields in _numbered(lines, defaults):
        try:
            requests.append(as_request(fields))
        except RequestValidationError as exc:
            raise RequestValidationError(f"prompts line {number}", str(exc)) from None
    return requests


def _numbered(
    lines: Iterable[str], defaults: Mapping[str, Any] | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    base = dict(defaults or {})
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                fields = json.loads(line)
            except ValueError as exc:
                raise RequestValidationError(
                    f"prompts line {number}", f"is not valid JSON ({exc})", allowed="a JSON object"
                ) from None
            if not isinstance(fields, dict):
                raise RequestValidationError(
                    f"prompts line {number}", "is not a JSON object", allowed="a JSON object"
                )
            yield number, {**base, **fields}
        else:
            yield number, {**base, "prompt": line}


@attrs.define
class BulkSummary:
    """What a bulk job did.

    Attributes:
        succeeded: Prompts that gave photos, all saved.
        failed: Prompts that ended with an error, or with photos that could not be saved.
        files: Photos saved.
        failed_downloads: Photos generated (and paid for) but not saved; a resumed job
            with the same journal fetches them again without generating.
        credits: Credits spent, or possibly spent, by this run (see `Outcome.credits`).
        over_budget: Prompts not sent because they would have passed `max_credits`
            (counted in `failed`; a resumed job with a larger budget sends them).
        stopped_by: The refusal (401, 402 or 403) after which the job sent no more paid
            requests, if one came; the prompts left are failed with `NotSentError`.
    """

    succeeded: int = 0
    failed: int = 0
    files: int = 0
    failed_downloads: int = 0
    credits: int = 0
    over_budget: int = 0
    stopped_by: ApiframeError | None = None


def _error_entry(error: Exception) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)}


def _manifest_line(outcome: Outcome[Generation], saved: SavedPhotos) -> str:
    request = outcome.request
    fields = attrs.asdict(request) if isinstance(request, GenerateRequest) else dict(request)
    error = outcome.error or (saved.failures[0] if saved.failures else None)
    entry: dict[str, Any] = {
        "index": outcome.index,
        "prompt": fields.get("prompt"),
        "task_id": outcome.result.task_id if outcome.result else None,
        "files": [str(f) for f in saved.files],
        "replayed": outcome.replayed,
        "credits": outcome.credits,
        "failed_downloads": [{"url": f.url, **_error_entry(f)} for f in saved.failures],
        "error": None if error is None else _error_entry(error),
    }
    return json.dumps(entry, ensure_ascii=False, default=str) + "\n"


class _Saver:
    """Saves each outcome's photos and writes its manifest line, exactly once."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        manifest: IO[str],
        http: httpx.AsyncClient,
        *,
        allow_private_addresses: bool,
    ) -> None:
        self.summary = BulkSummary()
        self._allow_private_addresses = allow_private_addresses
        self._out_dir = out_dir
        self._manifest = manifest
        self._http = http
        # Taken before a save starts, given back when it ends: generations outrunning the
        # downloads wait here, so pending saves stay bounded.
        self._slots = anyio.Semaphore(DOWNLOAD_CONCURRENCY)
        # Outcomes received and not yet in the manifest: whatever stops the job, they get in.
        self._pending: dict[int, Outcome[Generation]] = {}

    async def start(self, tg: TaskGroup, outcome: Outcome[Generation]) -> None:
        """Save `outcome` in `tg`, once a slot is free."""
        self._pending[outcome.index] = outcome
        await self._slots.acquire()
        tg.start_soon(self._save, outcome)

    async def _save(self, outcome: Outcome[Generation]) -> None:
        try:
            saved = SavedPhotos([], [])
            if outcome.result is not None:
                saved = await save_photos(
                    outcome.result,
                    self._out_dir,
                    http_client=self._http,
                    allow_private_addresses=self._allow_private_addresses,
                )
        finally:
            self._slots.release()
        self._record(outcome, saved)

    def record_stopped(self, received: Iterable[Outcome[Generation]]) -> None:
        """Record what was received but not saved when the job stopped, and what is on disk."""
        for outcome in [*self._pending.values(), *received]:
            stopped = SavedPhotos([], [])
            if outcome.result is not None:
                stopped = saved_so_far(outcome.result, self._out_dir)
            self._record(outcome, stopped)

    def _record(self, outcome: Outcome[Generation], saved: SavedPhotos) -> None:
        self._pending.pop(outcome.index, None)
        summary = self.summary
        summary.credits += outcome.credits
        summary.files += len(saved.files)
        summary.failed_downloads += len(saved.failures)
        summary.over_budget += isinstance(outcome.error, BudgetExceededError)
        if outcome.error is None and not saved.failures:
            summary.succeeded += 1
        else:
            summary.failed += 1
        self._manifest.write(_manifest_line(outcome, saved))
        self._manifest.flush()


async def run_bulk_job(
    client: AsyncApiframe,
    requests: Iterable[RequestLike] | AsyncIterable[RequestLike],
    out_dir: str | os.PathLike[str],
    *,
    manifest: IO[str],
    concurrency: int = 16,
    download_client: httpx.AsyncClient | None = None,
    on_progress: Callable[[Progress], object] | None = None,
    journal: str | os.PathLike[str] | None = None,
    on_uncertain: UncertainPolicy = "skip",
    max_credits: int | None = None,
    allow_private_addresses: bool = False,
) -> BulkSummary:
    """Generate for every request, save the photos into `out_dir`, write the manifest.

    Photos are saved while the next generations run. Each request that ended gets one
    JSON line in `manifest`: `index`, `prompt`, `task_id`, `files`, `replayed`, `credits`,
    `failed_downloads` (each photo not saved: its `url`, `type` and `message`), and `error`
    (`null`, or its type and message). A photo that cannot be saved never stops the job.
    With a `journal`, a rerun pays only for what is not done yet (see `Journal`), and
    fetches only the photos not saved yet. `max_credits` caps what the job may spend.
    Photos are fetched only from public addresses (see `download()`), unless
    `allow_private_addresses`.

    If the job is cancelled (Ctrl-C), every result already received is still written to
    the manifest before the cancellation goes on. If `requests` raises, the generations
    already sent end and are saved first, then the error is raised.
    """
    http = download_client or httpx.AsyncClient(follow_redirects=True)
    saver = _Saver(out_dir, manifest, http, allow_private_addresses=allow_private_addresses)
    job = client.generate_many(
        requests,
        concurrency=concurrency,
        on_progress=on_progress,
        journal=journal,
        on_uncertain=on_uncertain,
        max_credits=max_credits,
    )
    input_error: Exception | None = None
    try:
        async with job as outcomes:
            async with anyio.create_task_group() as tg:
                try:
                    async for outcome in outcomes:
                        await saver.start(tg, outcome)
                except Exception as exc:  # noqa: BLE001 -- the input's own error, raised below
                    # The photos being saved were paid for: they are saved before it surfaces.
                    input_error = exc
            if input_error is not None:
                raise input_error
    finally:
        saver.record_stopped(job.take_received())
        saver.summary.stopped_by = job.progress.stopped_by
        if download_client is None:
            with anyio.CancelScope(shield=True):
                await http.aclose()
    return saver.summary
