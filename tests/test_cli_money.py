"""The main job's money controls, counted at a loopback fake: budget, balance, bad input.

Each test runs `apiframe generate-many` with a key against the fake APIFRAME served on
127.0.0.1, so the fake's own records say what was charged, whatever the command prints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apiframe_async import Journal, Progress
from apiframe_async._cli import _LiveColumn, app
from apiframe_async.testing import FakeApiframe

GENERATE = "/ai-photo-generate"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("APIFRAME_API_KEY", raising=False)
    monkeypatch.delenv("APIFRAME_BASE_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


@pytest.fixture
def fake() -> FakeApiframe:
    return FakeApiframe(credits=10_000)


@pytest.fixture
def served(fake: FakeApiframe) -> Iterator[str]:
    with fake.serve() as base_url:
        yield base_url


def run(runner: CliRunner, fake: FakeApiframe, base_url: str, *args: str) -> tuple[int, str]:
    training_id = fake.add_trained_model()
    result = runner.invoke(
        app,
        [
            "generate-many",
            *args,
            "--training-id",
            training_id,
            "--api-key",
            fake.api_key,
            "--base-url",
            base_url,
        ],
    )
    return result.exit_code, result.output


def prompts_file(tmp_path: Path, n: int, bad: dict[int, str] | None = None) -> Path:
    lines = [f"TOKMSN man, take {i}" for i in range(1, n + 1)]
    for number, text in (bad or {}).items():
        lines[number - 1] = text
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def charged(fake: FakeApiframe) -> int:
    return sum(call.charged for call in fake.calls(GENERATE))


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param('{"prompt": "TOKMSN man", ', id="broken-json"),
        pytest.param('{"prompt": "TOKMSN man", "number_of_images": 9}', id="invalid-field"),
        pytest.param('{"prompt": "TOKMSN man", "colour": "red"}', id="unknown-field"),
        pytest.param('{"prompt": "TOKMSN man", "aspect_ratio": "7:7"}', id="bad-ratio"),
    ],
)
def test_a_bad_line_41_of_60_stops_the_job_before_any_paid_request(
    runner: CliRunner, fake: FakeApiframe, served: str, tmp_path: Path, line: str
) -> None:
    """Nothing is sent: the one error line names line 41; the fake counts 0 paid POSTs."""
    prompts = prompts_file(tmp_path, 60, {41: line})
    code, output = run(runner, fake, served, str(prompts), "--out", str(tmp_path / "o"))
    assert code == 1
    (error,) = errors(output)
    assert "prompts line 41" in error
    assert fake.calls(GENERATE) == []
    assert "Traceback" not in output


def test_a_bad_line_on_stdin_stops_the_job_before_any_paid_request(
    runner: CliRunner, fake: FakeApiframe, served: str, tmp_path: Path
) -> None:
    """Standard input is read to its end and checked before the first request, too."""
    training_id = fake.add_trained_model()
    text = "".join(f"take {i}\n" for i in range(1, 41)) + '{"seed": "x", "prompt": "p"}\n'
    result = runner.invoke(
        app,
        [
            *("generate-many", "-", "--out", str(tmp_path / "o"), "--training-id", training_id),
            *("--api-key", fake.api_key, "--base-url", served),
        ],
        input=text,
    )
    assert result.exit_code == 1
    assert "prompts line 41" in errors(result.output)[0]
    assert fake.calls(GENERATE) == []


def test_max_credits_caps_what_the_fake_charges_and_the_cli_shows_it(
    runner: CliRunner, fake: FakeApiframe, served: str, tmp_path: Path
) -> None:
    """300 prompts, --max-credits 180: the fake charges 180, the CLI and manifest say 180."""
    prompts = prompts_file(tmp_path, 300)
    out = tmp_path / "o"
    code, output = run(
        runner, fake, served, str(prompts), "--out", str(out), "--max-credits", "180"
    )
    assert code == 1  # the prompts over the budget are failures: a resume sends them
    assert charged(fake) == 180
    shown = re.search(r"(\d+) credits spent", output)
    assert shown is not None
    assert int(shown.group(1)) == 180
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 300
    assert sum(e["credits"] for e in manifest) == 180
    refused = [e for e in manifest if e["error"] is not None]
    assert len(refused) == 120
    assert {e["error"]["type"] for e in refused} == {"BudgetExceededError"}
    assert "this job costs at most 180 credits; the account has 10000" in output
    assert "120 prompts not sent, over --max-credits" in output


def test_a_job_the_balance_cannot_pay_for_is_refused_before_it_starts(
    runner: CliRunner, tmp_path: Path
) -> None:
    """100 prompts on 50 credits: refused, 0 POSTs; --max-credits 50 or the flag start it."""
    fake = FakeApiframe(credits=50)
    prompts = str(prompts_file(tmp_path, 100))
    with fake.serve() as served:
        code, output = run(runner, fake, served, prompts, "--out", str(tmp_path / "a"))
        assert code == 1
        (error,) = errors(output)
        assert "may cost 100 credits and the account has 50" in error
        assert "--allow-over-balance" in error
        assert fake.calls(GENERATE) == []

        code, output = run(
            runner, fake, served, prompts, "--out", str(tmp_path / "c"), "--max-credits", "30"
        )
        assert charged(fake) == 30
        code, output = run(
            runner, fake, served, prompts, "--out", str(tmp_path / "d"), "--allow-over-balance"
        )
    assert charged(fake) == 50, "the fake refused what the balance could not pay (402)"
    assert "account has 20" in output
    assert code == 1
    assert "Traceback" not in output


def test_the_progress_bar_shows_credits_spent() -> None:
    """The live column reads the job's credits."""
    column = _LiveColumn()
    column.progress = Progress(succeeded=3, credits=7)

    class _Task:
        speed = None

    assert "credits 7" in column.render(_Task()).plain


def test_without_a_key_a_journal_resumes_the_demo_job(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The built-in fake's model keeps its id, so a second run replays all and generates 0."""
    fakes: list[FakeApiframe] = []

    class Recorded(FakeApiframe):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)  # type: ignore[arg-type]
            fakes.append(self)

    monkeypatch.setattr("apiframe_async.testing.FakeApiframe", Recorded)
    prompts, out, book = prompts_file(tmp_path, 12), tmp_path / "o", tmp_path / "job.sqlite"
    args = ["generate-many", str(prompts), "--out", str(out), "--journal", str(book)]
    first = runner.invoke(app, args)
    second = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert len(fakes[0].calls(GENERATE)) == 12
    assert fakes[1].calls(GENERATE) == []
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(e["replayed"] and e["credits"] == 0 and e["files"] for e in manifest)
    assert len(list(out.glob("*.png"))) == 12
    with Journal(book) as journal:
        assert journal.counts() == {"done": 12}


def test_a_fixed_training_id_is_made_once() -> None:
    """add_trained_model(training_id=...) names the model; asked again, it keeps it."""
    fake = FakeApiframe()
    model = "5c0d7a3e-0000-4000-8000-000000000001"
    assert fake.add_trained_model(training_id=model) == model
    assert fake.add_trained_model(training_id=model) == model
    assert fake.task_ids("/ai-photo-train") == [model]
    assert fake.task(model) is not None
