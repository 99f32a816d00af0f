"""Ctrl-C and SIGTERM mid-job, sent to a real `apiframe generate-many` process.

What was received is in the manifest and the journal before the process exits, no
temporary file is left in the folder, and a resume pays for nothing twice.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apiframe_async.testing import FakeApiframe

GENERATE = "/ai-photo-generate"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _manifest(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _journal_states(path: Path) -> dict[int, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT position, state FROM items").fetchall())


@pytest.mark.parametrize(
    "signum",
    [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")],
)
def test_a_signal_mid_job_records_what_was_received(tmp_path: Path, signum: signal.Signals) -> None:
    """Stopped mid-job: received results are done in the journal and in the manifest."""
    fake = FakeApiframe()
    training_id = fake.add_trained_model()
    # Slow enough that generations and downloads are under way when the signal comes.
    fake.inject_fault(None, path=GENERATE, delay=0.05, times=100_000)
    fake.inject_fault(None, path="/images", delay=0.1, times=100_000)
    prompts, out, book = tmp_path / "prompts.txt", tmp_path / "photos", tmp_path / "job.sqlite"
    prompts.write_text("".join(f"TOKMSN man, take {i}\n" for i in range(100)))
    with fake.serve() as base_url:
        command = [
            *(sys.executable, "-m", "apiframe_async", "generate-many", str(prompts)),
            *("--out", str(out), "--journal", str(book), "--training-id", training_id),
            *("--api-key", fake.api_key, "--base-url", base_url, "--number-of-images", "2"),
        ]
        process = subprocess.Popen(  # noqa: S603 -- our own CLI
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while len(_manifest(out / "manifest.jsonl")) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 128 + signum.value, stderr.decode()
        assert f"stopped by {signum.name}" in stderr.decode()
        assert "--on-uncertain resend" in stderr.decode(), "the hint names the CLI option"
        assert "on_uncertain=" not in stderr.decode()

        manifest = _manifest(out / "manifest.jsonl")
        states = _journal_states(book)
        received = {e["index"] for e in manifest if e["task_id"] is not None}
        assert 10 <= len(manifest) < 100
        assert len({e["index"] for e in manifest}) == len(manifest), "a line written twice"
        assert {i for i, state in states.items() if state == "done"} == received
        assert "uncertain" not in states.values()
        for entry in manifest:
            files = [Path(str(f)) for f in entry["files"]]  # type: ignore[attr-defined]
            assert all(f.read_bytes().startswith(PNG_SIGNATURE) for f in files)
            not_saved = entry["failed_downloads"]
            assert len(files) + len(not_saved) == 2  # type: ignore[arg-type]
        leftovers = [p.name for p in out.iterdir() if p.suffix == ".part" or p.stat().st_size == 0]
        assert leftovers == []

        fake.set_faults(None)
        resumed = subprocess.run(  # noqa: S603 -- our own CLI
            command, capture_output=True, timeout=120, check=False
        )
    charged = fake.generate_count_by_prompt()
    assert max(charged.values()) == 1, "a resume paid for a prompt twice"
    final = _manifest(out / "manifest.jsonl")
    assert len(final) == 100, resumed.stderr.decode()
    done = [e for e in final if e["error"] is None]
    assert all(len(e["files"]) == 2 for e in done)  # type: ignore[arg-type]
    # Only what was in flight when the signal came may be uncertain, never a received one.
    uncertain = {e["index"] for e in final if e["error"] is not None}
    assert not uncertain & received
