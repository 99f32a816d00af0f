"""The main job: prompts in, a folder of photos and a JSONL manifest out.

Shared by the `apiframe generate-many` command and by anyone who wants the same job from
Python. Every prompt gets exactly one manifest line: its task and files, or its error.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import anyio
import attrs
import httpx

from ._client import AsyncApiframe
from ._download import download
from ._errors import ApiframeError, RequestValidationError
from ._fanout import Outcome, Progress, RequestLike
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
            yield {**base, **fields}
        else:
            yield {**base, "prompt": line}


@attrs.define
class BulkSummary:
    """What a bulk job did.

    Attributes:
        succeeded: Prompts that gave photos, saved.
        failed: Prompts that ended with an error.
        files: Photos saved.
    """

    succeeded: int = 0
    failed: int = 0
    files: int = 0


def _manifest_line(outcome: Outcome[Generation], files: list[Path], error: Exception | None) -> str:
    request = outcome.request
    fields = attrs.asdict(request) if isinstance(request, GenerateRequest) else dict(request)
    entry: dict[str, Any] = {
        "index": outcome.index,
        "prompt": fields.get("prompt"),
        "task_id": outcome.result.task_id if outcome.result else None,
        "files": [str(f) for f in files],
        "replayed": outcome.replayed,
        "error": None if error is None else {"type": type(error).__name__, "message": str(error)},
    }
    return json.dumps(entry, ensure_ascii=False, default=str) + "\n"


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
    allow_private_addresses: bool = False,
) -> BulkSummary:
    """Generate for every request, save the photos into `out_dir`, write the manifest.

    Photos are saved while the next generations run. Each request gets one JSON line in
    `manifest`: `index`, `prompt`, `task_id`, `files`, `replayed`, and `error` (`null`, or
    its type and message). With a `journal`, a rerun pays only for what is not done yet
    (see `Journal`); photos already saved are not fetched again. Photos are fetched only
    from public addresses (see `download()`), unless `allow_private_addresses`.
    """
    summary = BulkSummary()
    # Taken before a save starts, given back when it ends: generations outrunning the
    # downloads wait here, so pending saves stay bounded.
    slots = anyio.Semaphore(DOWNLOAD_CONCURRENCY)
    own_http = download_client is None
    http = download_client or httpx.AsyncClient(follow_redirects=True)

    async def save(outcome: Outcome[Generation]) -> None:
        files: list[Path] = []
        error: Exception | None = outcome.error
        try:
            if outcome.result is not None:
                files = await download(
                    outcome.result,
                    out_dir,
                    http_client=http,
                    allow_private_addresses=allow_private_addresses,
                )
        except (ApiframeError, OSError) as exc:
            error = exc
        finally:
            slots.release()
        if error is None:
            summary.succeeded += 1
            summary.files += len(files)
        else:
            summary.failed += 1
        manifest.write(_manifest_line(outcome, files, error))
        manifest.flush()

    try:
        job = client.generate_many(
            requests,
            concurrency=concurrency,
            on_progress=on_progress,
            journal=journal,
            on_uncertain=on_uncertain,
        )
        async with anyio.create_task_group() as tg, job as outcomes:
            async for outcome in outcomes:
                await slots.acquire()
                tg.start_soon(save, outcome)
    finally:
        if own_http:
            await http.aclose()
    return summary
