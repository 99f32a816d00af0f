"""Faults on real sockets: the fake APIFRAME on loopback, counted on the server's side.

Never pay twice, never lose what was paid for: a 2,000-prompt job under rate limits, server
errors, dropped connections and slow replies accounts for every prompt exactly once, and a
job killed with SIGKILL three times resumes from its journal without paying twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from apiframe_async import (
    APIConnectionError,
    ApiframeError,
    AsyncApiframe,
    GenerateRequest,
    Journal,
    RetryPolicy,
)
from apiframe_async.testing import FakeApiframe, Faults

GENERATE = "/ai-photo-generate"


@pytest.fixture
def faulty() -> FakeApiframe:
    """A fake that misbehaves on generate the way a real deployment does on a bad day."""
    faults = Faults(
        rate_429=0.10,
        retry_after="0.02",
        rate_500=0.05,
        rate_503=0.05,
        rate_drop_before=0.01,
        rate_drop_after=0.01,
        slow_rate=0.05,
        slow_seconds=0.05,
        paths=[GENERATE],
        seed=20261124,
    )
    return FakeApiframe(faults=faults, seed=7)


@pytest.mark.anyio
async def test_two_thousand_prompts_under_faults(faulty: FakeApiframe) -> None:
    """Every prompt ends once (result or typed error); nobody pays twice; the bound holds."""
    n, concurrency = 2000, 32
    retry = RetryPolicy(max_retries=3, initial_backoff=0.005, max_backoff=0.05)
    training_id = faulty.add_trained_model()
    requests = (GenerateRequest(training_id=training_id, prompt=f"prompt {i}") for i in range(n))
    async with (
        faulty.serve() as base_url,
        AsyncApiframe(faulty.api_key, base_url=base_url, retry=retry) as client,
        client.generate_many(requests, concurrency=concurrency) as outcomes,
    ):
        results = [o async for o in outcomes]

    assert sorted(o.index for o in results) == list(range(n))
    failed = [o for o in results if not o.ok]
    assert all(isinstance(o.error, ApiframeError) for o in failed)
    charged = faulty.generate_count_by_prompt()
    assert max(charged.values()) == 1, "a retry paid for a generation twice"
    assert all(charged.get(f"prompt {o.index}") == 1 for o in results if o.ok)
    # Only a connection lost after the work may have been charged without an answer.
    lost = [o for o in failed if f"prompt {o.index}" in charged]
    assert all(isinstance(o.error, APIConnectionError) for o in lost)
    assert all(
        o.error.may_have_been_submitted for o in lost if isinstance(o.error, APIConnectionError)
    )
    assert faulty.peak_in_flight(GENERATE) <= concurrency
    faults = Counter(str(c.fault) for c in faulty.calls(GENERATE) if c.fault is not None)
    assert len(faults) >= 5, faults
    print(  # noqa: T201 -- the suite's figures, for the record in CI's output
        f"\nfault suite: {n} prompts, {len(failed)} failed, {sum(faults.values())} faults "
        f"injected {dict(faults)}, duplicates 0, peak in flight "
        f"{faulty.peak_in_flight(GENERATE)}/{concurrency}"
    )


def _start(
    args: list[str], env: dict[str, str], *, errors: bool = False
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 -- our own CLI, our own arguments
        [sys.executable, "-m", "apiframe_async", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if errors else subprocess.DEVNULL,
    )


def _wait_for_progress(fake: FakeApiframe, more_than: int, deadline: float) -> None:
    while len(fake.calls(GENERATE)) <= more_than and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture
def served() -> Iterator[tuple[FakeApiframe, str]]:
    fake = FakeApiframe(
        faults=Faults(slow_rate=0.5, slow_seconds=0.1, paths=[GENERATE], seed=3), seed=11
    )
    with fake.serve() as base_url:
        yield fake, base_url


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"kill-seed-{s}") for s in (1, 2)])
def test_killed_three_times_and_resumed(
    served: tuple[FakeApiframe, str], tmp_path: Path, seed: int
) -> None:
    """SIGKILL at random points, resume from the journal: none paid twice, none lost."""
    fake, base_url = served
    rng = random.Random(seed)
    n = 300
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"killed job prompt {i}\n" for i in range(n)))
    journal = tmp_path / "job.sqlite"
    out = tmp_path / "photos"
    env = {
        **os.environ,
        "APIFRAME_API_KEY": fake.api_key,
        "APIFRAME_BASE_URL": base_url,
        "COLUMNS": "120",
    }
    args = [
        "generate-many",
        str(prompts),
        "--out",
        str(out),
        "--journal",
        str(journal),
        "--training-id",
        fake.add_trained_model(),
        "--concurrency",
        "16",
    ]
    for _ in range(3):
        process = _start(args, env)
        _wait_for_progress(
            fake, len(fake.calls(GENERATE)) + rng.randint(5, 60), time.monotonic() + 30
        )
        time.sleep(rng.uniform(0, 0.1))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL

    final = _start(args, env, errors=True)
    _, stderr = final.communicate(timeout=120)
    charged = fake.generate_count_by_prompt()
    assert max(charged.values()) == 1, "a resumed job paid for a prompt twice"
    with Journal(journal) as opened:
        counts = opened.counts()
    assert sum(counts.values()) == n, counts
    assert set(counts) <= {"done", "uncertain", "sending"}
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["index"] for e in manifest) == list(range(n)), "one line per prompt"
    done = [e for e in manifest if e["error"] is None]
    uncertain = [
        e for e in manifest if e["error"] and e["error"]["type"] == "UncertainSubmissionError"
    ]
    assert len(done) + len(uncertain) == n
    assert len(done) == counts.get("done", 0)
    # Every prompt charged has its photos, or is reported as uncertain; none is lost.
    assert {e["prompt"] for e in done} <= set(charged)
    assert final.returncode == (1 if uncertain else 0), stderr.decode()
    # Everything the job wrote (photos, manifest, journal and its WAL) is free of the key.
    written = [path for path in tmp_path.rglob("*") if path.is_file() and path != prompts]
    assert len(written) > len(done)
    assert not [path for path in written if fake.api_key.encode() in path.read_bytes()]
    print(  # noqa: T201 -- the suite's figures, for the record in CI's output
        f"\nkill-and-resume (seed {seed}): {n} prompts, 3 kills, {len(done)} done, "
        f"{len(uncertain)} uncertain, duplicates 0, lost 0"
    )


@pytest.mark.anyio
async def test_cancelling_at_random_points_leaves_nothing_behind(faulty: FakeApiframe) -> None:
    """Jobs cancelled at random moments leave no request in flight at the server."""
    rng = random.Random(5)
    faulty.set_faults(Faults(slow_rate=0.5, slow_seconds=0.05, paths=[GENERATE], seed=1))
    training_id = faulty.add_trained_model()
    async with (
        faulty.serve() as base_url,
        AsyncApiframe(faulty.api_key, base_url=base_url) as client,
    ):
        for round_ in range(5):
            requests = (
                GenerateRequest(training_id=training_id, prompt=f"r{round_} p{i}")
                for i in range(10_000)
            )
            with anyio.move_on_after(rng.uniform(0.05, 0.3)):
                async with client.generate_many(requests, concurrency=16) as outcomes:
                    async for _ in outcomes:
                        pass
            with anyio.fail_after(5):
                # The fake counts requests in flight but signals nothing: poll it.
                while faulty.in_flight(GENERATE):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        # The client is still usable after all that.
        await client.generate(training_id=training_id, prompt="after the cancellations")
