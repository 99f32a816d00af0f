"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import respx

from apiframe_async import AsyncApiframe, PollPolicy, RetryPolicy


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ],
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each `@pytest.mark.anyio` test once per backend."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _fake_state_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's built-in fake keeps its state in the test's folder, not the user's cache."""
    monkeypatch.setenv("APIFRAME_FAKE_STATE", str(tmp_path / "fake-state.json"))


API_KEY = "test-key-5f1c0e"
BASE_URL = "https://api.apiframe.pro"

#: Retries and polls that take milliseconds, so tests of waiting do not wait.
FAST_RETRY = RetryPolicy(max_retries=3, initial_backoff=0.001, max_backoff=0.005)
FAST_POLL = PollPolicy(initial_interval=0.001, max_interval=0.005, deadline=5.0)


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    """A respx router standing in for the APIFRAME server."""
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client(api: respx.MockRouter) -> AsyncIterator[AsyncApiframe]:
    """A client whose requests all reach the `api` router, with fast retries and polls."""
    http = httpx.AsyncClient(transport=httpx.MockTransport(api.async_handler))
    async with (
        http,
        AsyncApiframe(
            api_key=API_KEY, base_url=BASE_URL, http_client=http, retry=FAST_RETRY, poll=FAST_POLL
        ) as apiframe,
    ):
        yield apiframe
