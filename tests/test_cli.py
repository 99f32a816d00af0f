"""The `apiframe` command line: the main job on the fake, one-line errors, serve-fake."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from apiframe_async import AsyncApiframe
from apiframe_async._cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner with no API key in the environment: every command uses the fake."""
    monkeypatch.delenv("APIFRAME_API_KEY", raising=False)
    monkeypatch.delenv("APIFRAME_BASE_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    return CliRunner()


def test_generate_many_on_the_fake_writes_photos_and_a_manifest(
    runner: CliRunner, tmp_path: Path
) -> None:
    """With no key, the bulk job runs on the fake: real PNGs, one manifest line per prompt."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# a comment\nTOKMSN man in a suit\n\nTOKMSN man on a boat\n"
        '{"prompt": "TOKMSN man, two takes", "number_of_images": 2}\n'
    )
    out = tmp_path / "photos"
    result = runner.invoke(app, ["generate-many", str(prompts), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "built-in fake" in result.output
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["index"] for e in manifest) == [0, 1, 2]
    assert all(e["error"] is None and e["task_id"] for e in manifest)
    photos = sorted(out.glob("*.png"))
    assert len(photos) == 4
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in photos)
    assert sorted(str(p) for e in manifest for p in e["files"]) == [str(p) for p in photos]


def test_generate_many_reads_stdin(runner: CliRunner, tmp_path: Path) -> None:
    """'-' reads prompts from standard input."""
    out = tmp_path / "photos"
    result = runner.invoke(app, ["generate-many", "-", "--out", str(out)], input="one\ntwo\n")
    assert result.exit_code == 0, result.output
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(
            ["generate", "TOKMSN man", "--aspect-ratio", "7:7"], "aspect_ratio", id="bad-ratio"
        ),
        pytest.param(
            ["generate", "TOKMSN man", "--width", "512"], "width", id="width-without-custom"
        ),
        pytest.param(["wait", "no-such-task", "--deadline", "30"], "unknown", id="unknown-task"),
    ],
)
def test_errors_are_one_line_and_a_non_zero_exit(
    runner: CliRunner, args: list[str], needle: str
) -> None:
    """A failure prints one 'error:' line naming the problem, and no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert needle in errors[0]
    assert "Traceback" not in result.output


def test_a_bad_prompts_line_is_one_error_line(runner: CliRunner, tmp_path: Path) -> None:
    """A malformed JSON line in a prompts file stops the job with one readable line."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('fine\n{"prompt": \n')
    result = runner.invoke(app, ["generate-many", str(prompts), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "prompts line 2" in result.output
    assert "Traceback" not in result.output


def test_generate_prints_json_and_saves(runner: CliRunner, tmp_path: Path) -> None:
    """`generate` prints the result as JSON and saves the photos with --out."""
    result = runner.invoke(
        app, ["generate", "TOKMSN man", "--number-of-images", "2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert '"status": "finished"' in result.output
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_upload_then_train_on_the_fake(runner: CliRunner, tmp_path: Path) -> None:
    """`upload` prepares photos and `train` trains on them, each waiting for the end."""
    photos = []
    for i in range(10):
        path = tmp_path / f"me-{i}.png"
        path.write_bytes(PNG_SIGNATURE + bytes([i]) * 20)
        photos.append(str(path))
    uploaded = runner.invoke(app, ["upload", *photos, "--ethnicity", "white", "--gender", "male"])
    assert uploaded.exit_code == 0, uploaded.output
    assert "Images ready for training" in uploaded.output


def test_account_on_the_fake(runner: CliRunner) -> None:
    """`account` prints the account as JSON."""
    result = runner.invoke(app, ["account"])
    assert result.exit_code == 0, result.output
    assert '"credits"' in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served_fake() -> Iterator[str]:
    """`apiframe serve-fake` as its own process on a loopback port."""
    port = _free_port()
    process = subprocess.Popen(  # noqa: S603 -- our own CLI
        [
            sys.executable,
            "-m",
            "apiframe_async",
            "serve-fake",
            "--port",
            str(port),
            "--api-key",
            "local-key",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "120"},
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_serve_fake_answers_curl_and_the_client(served_fake: str) -> None:
    """The served fake answers a plain curl and our client alike, and refuses a wrong key."""
    curl = shutil.which("curl") or "curl"
    ok = subprocess.run(  # noqa: S603 -- curl against our own loopback server
        [curl, "-s", "-H", "Authorization: local-key", f"{served_fake}/account"],
        capture_output=True,
        check=True,
        timeout=10,
    )
    assert "credits" in json.loads(ok.stdout)
    refused = subprocess.run(  # noqa: S603
        [
            curl,
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Authorization: wrong",
            f"{served_fake}/account",
        ],
        capture_output=True,
        check=True,
        timeout=10,
    )
    assert refused.stdout == b"401"

    async def with_client() -> int:
        async with AsyncApiframe("local-key", base_url=served_fake) as client:
            return (await client.account()).credits

    assert anyio.run(with_client) > 0
