"""`apiframe`: the command line. Needs the `cli` extra (`pip install 'apiframe-async[cli]'`).

Without an API key every command runs against the built-in fake APIFRAME, so a newcomer
can try the whole flow, and the bulk job writes real image files, with nothing to pay.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast

import anyio
import attrs
import httpx
import platformdirs
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as ProgressBar
from rich.text import Text

from ._bulk import BulkSummary, load_prompts, run_bulk_job
from ._client import AsyncApiframe
from ._download import download
from ._errors import ApiframeError
from ._fanout import Progress, as_request
from ._models import ASPECT_RATIOS, ETHNICITIES, GENDERS, Ethnicity, Gender, GenerateRequest, Task
from ._pricing import generation_cost
from ._terminal import escape_controls

if TYPE_CHECKING:
    from .testing import FakeApiframe

T = TypeVar("T")

app = typer.Typer(
    name="apiframe",
    help="APIFRAME AI Photos from the command line. With no API key, runs on a built-in fake.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Soft wrap: a line of ours is one line to a script reading it, whatever the terminal width.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def plain(text: object) -> Text:
    """`text` to print as it is: no rich markup, no terminal control sequences.

    Server messages, prompts and paths may hold `[...]` (markup to rich) or escape
    sequences; a `Text` is never parsed for markup, and controls are shown escaped.
    """
    return Text(escape_controls(str(text)))


def say(*parts: str | Text, console: Console | None = None) -> None:
    """Print a line of styled parts (`Text`) and untrusted text (`str`, shown literally)."""
    line = Text()
    for part in parts:
        line.append(part if isinstance(part, Text) else plain(part))
    (console or err).print(line, highlight=False)


def _show_version(value: bool) -> None:  # noqa: FBT001 -- typer's callback for a flag
    if value:
        say(f"apiframe-async {version('apiframe-async')}", console=out)
        raise typer.Exit


@app.callback()
def _options(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
    fake_state: Annotated[
        Path | None,
        typer.Option(
            envvar="APIFRAME_FAKE_STATE",
            show_envvar=True,
            help="Where the built-in fake keeps its state between commands "
            "(default: in the user's cache folder).",
        ),
    ] = None,
) -> None:
    """APIFRAME AI Photos from the command line. With no API key, runs on a built-in fake."""
    _fake_state_option.clear()
    if fake_state is not None:
        _fake_state_option.append(fake_state)


ApiKey = Annotated[
    str | None,
    typer.Option(
        envvar="APIFRAME_API_KEY",
        show_envvar=True,
        show_default=False,
        help="Your APIFRAME key. Unset: the built-in fake is used.",
    ),
]
BaseUrl = Annotated[
    str | None, typer.Option(envvar="APIFRAME_BASE_URL", show_envvar=True, help="API base URL.")
]

#: The built-in fake's trained model: the same id in every run, so journals can resume.
DEMO_TRAINING_ID = "5c0d7a3e-1f2b-4c8d-9e6a-0d3b7f1a2c4e"


class UncertainChoice(enum.StrEnum):
    """`--on-uncertain`: skip requests that may have been charged, or send them again."""

    skip = "skip"
    resend = "resend"


@attrs.frozen
class Session:
    """A client, the client for image downloads, and the fake behind both if there is one."""

    client: AsyncApiframe
    images: httpx.AsyncClient
    trained_model: str | None
    #: Photos come from the built-in fake, in-process: no address is off limits.
    local: bool = False


@contextlib.asynccontextmanager
async def _session(
    api_key: str | None, base_url: str | None, *, max_concurrency: int = 64
) -> AsyncIterator[Session]:
    if api_key:
        async with (
            AsyncApiframe(api_key, base_url=base_url, max_concurrency=max_concurrency) as client,
            httpx.AsyncClient(follow_redirects=True) as images,
        ):
            yield Session(client, images, None)
        return
    from .testing import FakeApiframe  # noqa: PLC0415 -- only without a key

    err.print(
        "[yellow]No APIFRAME_API_KEY set: using the built-in fake APIFRAME "
        "(nothing is charged; photos are drawn locally).[/]"
    )
    fake = FakeApiframe(fetches_to_finish=2)
    state_file = fake_state_path()
    model = _restore_fake(fake, state_file)
    try:
        async with (
            fake,
            fake.client() as api_http,
            fake.client() as images,
            AsyncApiframe(
                fake.api_key, http_client=api_http, max_concurrency=max_concurrency
            ) as client,
        ):
            yield Session(client, images, model, local=True)
    finally:
        # Whatever happened, what the fake did is kept: the next command carries on.
        _save_fake(fake, state_file)


#: Where the built-in fake keeps its state between commands (default: the user's cache).
FAKE_STATE_ENV = "APIFRAME_FAKE_STATE"
_fake_state_option: list[Path] = []


def fake_state_path() -> Path:
    """`--fake-state`, else `$APIFRAME_FAKE_STATE`, else a file in the user's cache folder."""
    if _fake_state_option:
        return _fake_state_option[-1]
    if os.environ.get(FAKE_STATE_ENV):
        return Path(os.environ[FAKE_STATE_ENV])
    return platformdirs.user_cache_path("apiframe-async") / "fake-state.json"


def _restore_fake(fake: FakeApiframe, path: Path) -> str:
    """Load the fake's earlier state if there is one; return the demo model's id."""
    try:
        fake.restore(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        say(
            Text("warning: ", style="yellow"),
            f"the fake's state in {path} is unusable ({exc}); starting afresh",
        )
    trainings = fake.task_ids("/ai-photo-train")
    # The first training of a state is the demo model, made when the state was; its id is
    # the same in every fresh state, so that a journal of the no-key job resumes.
    return str(trainings[0]) if trainings else fake.add_trained_model(training_id=DEMO_TRAINING_ID)


def _save_fake(fake: FakeApiframe, path: Path) -> None:
    """Write the state atomically (a temporary file renamed into place), private to the user."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(fake.state(), file)
        partial.replace(path)
    except OSError as exc:
        say(Text("warning: ", style="yellow"), f"could not keep the fake's state in {path}: {exc}")


def _run(main: Callable[[], Awaitable[T]], *, interrupted_hint: str | None = None) -> T:
    """Run `main`; turn every failure into one line and a non-zero exit, never a traceback."""
    try:
        return anyio.run(main)
    except KeyboardInterrupt:
        say(Text("interrupted", style="red"), f"; {interrupted_hint}" if interrupted_hint else "")
        raise typer.Exit(130) from None
    except _TYPER_EXITS:
        raise  # typer's own way out (an exit code, a bad option): it prints its message
    except _EXPECTED as exc:
        _fail(exc)
    except BaseExceptionGroup as group:
        expected, unexpected = group.split(_EXPECTED)
        if unexpected is not None or expected is None:
            _fail(*(_unexpected(e) for e in _leaves(group)))
        _fail(*_leaves(expected))
    except Exception as exc:  # noqa: BLE001 -- a bug of ours still gets one line, no traceback
        _fail(_unexpected(exc))


def _unexpected(exc: BaseException) -> BaseException:
    if isinstance(exc, _EXPECTED):
        return exc
    return RuntimeError(f"unexpected {type(exc).__name__}: {exc} (please report this)")


class JobRefusedError(Exception):
    """A job the command will not start as asked (one `error:` line, exit 1)."""


_EXPECTED = (ApiframeError, OSError, JobRefusedError)
# click's exit and usage errors, or typer's vendored copies of them (typer >= 0.2x no
# longer depends on click): found through names typer exports.
_TYPER_EXITS: tuple[type[Exception], ...] = (
    typer.Exit,
    typer.Abort,
    *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"),
)


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _fail(*errors: BaseException) -> NoReturn:
    for exc in errors:
        say(Text("error: ", style="red"), str(exc))
    raise typer.Exit(1)


def _print_json(value: Any) -> None:  # noqa: ANN401
    data = attrs.asdict(value) if attrs.has(type(value)) else value
    out.print_json(json.dumps(data, default=_jsonable))


def _jsonable(value: object) -> object:
    # Read-only mappings (`extra`) print as objects; datetimes and enums as text.
    return dict(value) if isinstance(value, Mapping) else str(value)


class _LiveColumn(ProgressColumn):
    """Failed and in-flight counts, read live from the job's `Progress`."""

    #: The job's live counters, once the job has reported.
    progress: Progress | None = None

    def render(self, task: Any) -> Text:  # noqa: ANN401 -- rich's Task
        p = self.progress or Progress()
        speed = f"{task.speed:.0f}/s" if task.speed else "-/s"
        return Text(f"failed {p.failed} in flight {p.in_flight} credits {p.credits} {speed}")


def _read_lines(source: str) -> list[str]:
    """The whole input (a file, or stdin for `-`), read before anything is sent."""
    try:
        if source == "-":
            return sys.stdin.readlines()
        with Path(source).open(encoding="utf-8") as lines:
            return lines.readlines()
    except OSError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        say(Text("interrupted", style="red"), " while reading the prompts: nothing was sent")
        raise typer.Exit(130) from None


def _most_it_can_cost(requests: list[GenerateRequest], max_credits: int | None) -> int:
    total = sum(generation_cost(r.number_of_images) for r in requests)
    return total if max_credits is None else min(total, max_credits)


async def _check_balance(client: AsyncApiframe, most: int, *, allow_over: bool) -> None:
    """Show what the job may cost against the balance; refuse what the balance cannot pay."""
    balance = (await client.account()).credits
    say(f"this job costs at most {most} credits; the account has {balance}")
    if most > balance and not allow_over:
        raise JobRefusedError(
            f"the job may cost {most} credits and the account has {balance}: "
            "lower it with --max-credits, or pass --allow-over-balance to start anyway"
        )


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def _stoppable(job: Callable[[], Awaitable[T]]) -> T | signal.Signals:
    """Run `job`; Ctrl-C or SIGTERM cancels it, so that it records what it received first.

    Returns the job's result, or the signal that stopped it.
    """
    stopped_by: list[signal.Signals] = []
    result: list[T] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            # Signals reach only the main thread, and Windows has no handlers for them:
            # elsewhere Ctrl-C works as usual.
            if threading.current_thread() is not threading.main_thread():
                return
            with (
                contextlib.suppress(NotImplementedError),
                anyio.open_signal_receiver(*_STOP_SIGNALS) as signals,
            ):
                async for signum in signals:
                    stopped_by.append(signum)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        result.append(await job())
        tg.cancel_scope.cancel()
    return stopped_by[0] if stopped_by else result[0]


#: What to do after a journaled job stopped early, in the CLI's own terms.
_RESUME_HINT = (
    "run the same command again to resume; requests in flight when it stopped are "
    "skipped as possibly charged, unless you add --on-uncertain resend"
)


def _stopped(signum: signal.Signals, *, journaled: bool) -> NoReturn:
    say(
        Text(f"stopped by {signum.name}", style="red"),
        ": what was received is in the manifest; ",
        _RESUME_HINT if journaled else "add --journal to a job to be able to resume it",
    )
    raise typer.Exit(128 + signum.value)


def _summary_line(summary: BulkSummary, out_dir: Path, manifest_path: Path) -> str:
    line = (
        f"{summary.succeeded} prompts done, {summary.failed} failed, "
        f"{summary.files} photos in {out_dir}/, {summary.credits} credits spent; "
        f"manifest: {manifest_path}"
    )
    if summary.stopped_by is not None:
        line += (
            f"; stopped sending after {type(summary.stopped_by).__name__}: "
            f"{summary.stopped_by}; fix the key or the balance and run the same command "
            "again with --journal to send the rest"
        )
    if summary.over_budget:
        line += (
            f"; {summary.over_budget} prompts not sent, over --max-credits: run the same "
            "command again with --journal and a larger budget to send them"
        )
    if summary.failed_downloads:
        line += (
            f"; {summary.failed_downloads} photos could not be saved: run the same command "
            "again with --journal to fetch them without paying again"
        )
    return line


@app.command("generate-many")
def generate_many(
    prompts: Annotated[
        str, typer.Argument(help="File of prompts, one per line or JSON objects; '-' for stdin.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the photos.")] = Path(
        "apiframe-photos"
    ),
    training_id: Annotated[
        str | None, typer.Option(help="The trained model. With the fake: one is made.")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="JSONL manifest path (default: OUT/manifest.jsonl).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 16,
    number_of_images: Annotated[int | None, typer.Option(min=1, max=4)] = None,
    aspect_ratio: Annotated[str | None, typer.Option(help=", ".join(ASPECT_RATIOS))] = None,
    journal: Annotated[
        Path | None,
        typer.Option(help="SQLite journal: run the same command again to resume, paying once."),
    ] = None,
    on_uncertain: Annotated[
        UncertainChoice,
        typer.Option(help="With --journal: requests a killed run left in flight."),
    ] = UncertainChoice.skip,
    max_credits: Annotated[
        int | None,
        typer.Option(min=1, help="The most credits the job may spend (1 per photo)."),
    ] = None,
    allow_over_balance: Annotated[
        bool,
        typer.Option(
            "--allow-over-balance", help="Start even if the job may cost more than the balance."
        ),
    ] = False,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
) -> None:
    """Generate photos for many prompts at once, into a folder, with a live progress bar."""
    manifest_path = manifest or out_dir / "manifest.jsonl"
    lines = _read_lines(prompts)

    async def main() -> None:
        async with _session(api_key, base_url, max_concurrency=max(64, concurrency)) as session:
            model = training_id or session.trained_model
            if model is None:
                raise typer.BadParameter("--training-id is required with a real API key")
            defaults: dict[str, Any] = {"training_id": model}
            if number_of_images is not None:
                defaults["number_of_images"] = number_of_images
            if aspect_ratio is not None:
                defaults["aspect_ratio"] = aspect_ratio
            # Every line checked: a bad one stops the job before anything is paid for.
            requests = load_prompts(lines, defaults)
            if session.trained_model is None:  # a real key: real credits
                most = _most_it_can_cost(requests, max_credits)
                await _check_balance(session.client, most, allow_over=allow_over_balance)
            out_dir.mkdir(parents=True, exist_ok=True)
            live = _LiveColumn()
            # Narrow enough for an 80-column terminal (or a CI log) to keep it on one line.
            columns = (
                BarColumn(bar_width=12),
                MofNCompleteColumn(),
                live,
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            with (
                manifest_path.open("w", encoding="utf-8") as manifest_file,
                ProgressBar(*columns, console=err) as bar,
            ):
                bar_task = bar.add_task("generate", total=len(requests))

                def show(progress: Progress) -> None:
                    live.progress = progress
                    bar.update(bar_task, completed=progress.done)

                ended = await _stoppable(
                    lambda: run_bulk_job(
                        session.client,
                        requests,
                        out_dir,
                        manifest=manifest_file,
                        concurrency=concurrency,
                        download_client=session.images,
                        on_progress=show,
                        journal=journal,
                        on_uncertain=on_uncertain.value,
                        max_credits=max_credits,
                        allow_private_addresses=session.local,
                    )
                )
        if isinstance(ended, signal.Signals):
            _stopped(ended, journaled=journal is not None)
        say(_summary_line(ended, out_dir, manifest_path))
        _hint_uncertain(manifest_path)
        if ended.failed:
            raise typer.Exit(1)

    _run(main, interrupted_hint=_RESUME_HINT if journal is not None else None)


def _hint_uncertain(manifest_path: Path) -> None:
    """Say how to send again what an interrupted run may have left charged, in CLI terms."""
    with manifest_path.open(encoding="utf-8") as lines:
        uncertain = sum('"UncertainSubmissionError"' in line for line in lines)
    if uncertain:
        say(
            Text("hint: ", style="yellow"),
            f"{uncertain} prompt(s) may already have been charged by a run that stopped "
            "mid-request and were not sent again; check your APIFRAME dashboard, or run "
            "the same command with --on-uncertain resend to send them anyway",
        )


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw; mention the trigger word.")],
    training_id: Annotated[str | None, typer.Option(help="The trained model.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Save the photos here.")] = None,
    number_of_images: Annotated[int | None, typer.Option(min=1, max=4)] = None,
    aspect_ratio: Annotated[str | None, typer.Option(help=", ".join(ASPECT_RATIOS))] = None,
    width: Annotated[int | None, typer.Option(help="With --aspect-ratio custom.")] = None,
    height: Annotated[int | None, typer.Option(help="With --aspect-ratio custom.")] = None,
    seed: int | None = None,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
) -> None:
    """Generate photos for one prompt and print the result as JSON."""

    async def main() -> None:
        async with _session(api_key, base_url) as session:
            fields = {
                "training_id": training_id or session.trained_model or "",
                "prompt": prompt,
                "aspect_ratio": aspect_ratio,
                "width": width,
                "height": height,
                "number_of_images": number_of_images,
                "seed": seed,
            }
            request = as_request({k: v for k, v in fields.items() if v is not None})
            gen = await session.client.generate(request)
            _print_json(gen)
            if out_dir is not None:
                saved = await download(
                    gen, out_dir, http_client=session.images, allow_private_addresses=session.local
                )
                for path in saved:
                    say(f"saved {path}")

    _run(main)


@app.command()
def upload(
    photos: Annotated[list[Path], typer.Argument(help="10 to 30 photos of the subject.")],
    ethnicity: Annotated[str, typer.Option(help=", ".join(ETHNICITIES))],
    gender: Annotated[str, typer.Option(help=", ".join(GENDERS))],
    age: int | None = None,
    wait: Annotated[bool, typer.Option(help="Wait until the photos are ready.")] = True,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
) -> None:
    """Upload photos of a subject and prepare them for training."""

    async def main() -> None:
        async with _session(api_key, base_url) as session:
            submitted = await session.client.upload_images(
                photos,
                # Checked against the allowed values by the client, before anything is sent.
                ethnicity=cast("Ethnicity", ethnicity),
                gender=cast("Gender", gender),
                age=age,
            )
            _print_json(await session.client.wait(submitted.task_id) if wait else submitted)

    _run(main)


def _show_progress(task: Task) -> None:
    if task.percentage is not None:
        say(f"{task.task_id}: {task.status} {task.percentage}%")


@app.command()
def train(
    training_images_id: Annotated[str, typer.Argument(help="The finished upload's task id.")],
    trigger_word: str | None = None,
    wait: Annotated[bool, typer.Option(help="Wait until the training ends.")] = True,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
) -> None:
    """Train a model on prepared photos."""

    async def main() -> None:
        async with _session(api_key, base_url) as session:
            submitted = await session.client.train(training_images_id, trigger_word=trigger_word)
            if wait:
                _print_json(
                    await session.client.wait(submitted.task_id, on_progress=_show_progress)
                )
            else:
                _print_json(submitted)

    _run(main)


@app.command("wait")
def wait_command(
    task_id: str,
    deadline: Annotated[float | None, typer.Option(help="Seconds to wait at most.")] = None,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
) -> None:
    """Wait until a task ends and print it."""

    async def main() -> None:
        async with _session(api_key, base_url) as session:
            task = await session.client.wait(task_id, deadline=deadline, on_progress=_show_progress)
            _print_json(task)

    _run(main)


@app.command()
def fetch(task_ids: list[str], api_key: ApiKey = None, base_url: BaseUrl = None) -> None:
    """Print the current state of one or more tasks."""

    async def main() -> None:
        async with _session(api_key, base_url) as session:
            batch = await session.client.fetch_many(task_ids)
            _print_json(
                {
                    "tasks": [attrs.asdict(t) for t in batch.tasks.values()],
                    "missing": list(batch.missing),
                }
            )

    _run(main)


@app.command()
def account(api_key: ApiKey = None, base_url: BaseUrl = None) -> None:
    """Print the account: email, credits, images made, plan."""

    async def main() -> None:
        async with _session(api_key, base_url) as session:
            _print_json(await session.client.account())

    _run(main)


@app.command("reset-fake")
def reset_fake() -> None:
    """Forget the built-in fake's tasks and credits: the next command starts afresh."""
    path = fake_state_path()
    try:
        path.unlink()
    except FileNotFoundError:
        say(f"the built-in fake has no state in {path}: nothing to reset")
    except OSError as exc:
        _fail(exc)
    else:
        say(f"the built-in fake's state in {path} is reset")


@app.command("serve-fake")
def serve_fake(
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: Annotated[str, typer.Option(help="The key the fake accepts.")] = "fake-api-key",
    seed: int | None = None,
) -> None:
    """Serve the fake APIFRAME on a local port (needs the `server` extra: uvicorn)."""
    from .testing import run_fake_server  # noqa: PLC0415 -- only for this command

    say(f"fake APIFRAME on http://{host}:{port} (key {api_key!r}); Ctrl-C stops it")
    try:
        run_fake_server(host, port, api_key=api_key, seed=seed)
    except ImportError as exc:
        _fail(exc)


def main() -> None:
    """The `apiframe` entry point."""
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    try:
        app()
    except Exception as exc:  # noqa: BLE001 -- the last line of defence against a traceback
        say(Text("error: ", style="red"), str(_unexpected(exc)))
        sys.exit(1)
