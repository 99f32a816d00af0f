"""Client settings are checked like request fields, and `with_options` views share the client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from apiframe_async import (
    APITimeoutError,
    AsyncApiframe,
    PollPolicy,
    RateLimitError,
    RequestValidationError,
    RetryPolicy,
)
from apiframe_async.testing import FakeApiframe, Fault

pytestmark = pytest.mark.anyio

KEY = "sk-live-0123456789abcdef"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"timeout": 0}, "timeout", id="timeout-zero"),
        pytest.param({"timeout": -1.5}, "timeout", id="timeout-negative"),
        pytest.param({"timeout": float("nan")}, "timeout", id="timeout-nan"),
        pytest.param({"timeout": "10"}, "timeout", id="timeout-str"),
        pytest.param({"timeout": httpx.Timeout(5.0, read=0)}, "timeout.read", id="read-zero"),
        pytest.param(
            {"timeout": httpx.Timeout(5.0, connect=-1)}, "timeout.connect", id="connect-negative"
        ),
        pytest.param({"timeout": httpx.Timeout(5.0, pool=0.0)}, "timeout.pool", id="pool-zero"),
        pytest.param({"max_retries": -1}, "max_retries", id="retries-negative"),
        pytest.param({"max_retries": 1.5}, "max_retries", id="retries-float"),
        pytest.param({"max_concurrency": 0}, "max_concurrency", id="concurrency-zero"),
        pytest.param({"max_concurrency": True}, "max_concurrency", id="concurrency-bool"),
        pytest.param({"max_concurrency": "8"}, "max_concurrency", id="concurrency-str"),
    ],
)
def test_a_bad_setting_fails_at_construction_naming_it(
    kwargs: dict[str, object], field: str
) -> None:
    """Each bad setting is a RequestValidationError whose field is the setting."""
    with pytest.raises(RequestValidationError) as caught:
        AsyncApiframe(KEY, **kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert caught.value.allowed


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(KEY + "\n", id="trailing-newline"),
        pytest.param(" " + KEY, id="leading-space"),
        pytest.param(KEY[:6] + " " + KEY[6:], id="inner-space"),
        pytest.param(KEY[:6] + "\n" + KEY[6:], id="inner-newline"),
        pytest.param(KEY + "\t", id="trailing-tab"),
        pytest.param(KEY + "\x00", id="nul"),
    ],
)
def test_a_key_with_whitespace_is_refused_without_echoing_it(key: str) -> None:
    """A key that would break the header is refused, and the message never shows it."""
    with pytest.raises(RequestValidationError) as caught:
        AsyncApiframe(key)
    assert caught.value.field == "api_key"
    assert KEY not in str(caught.value)
    assert KEY[:6] not in str(caught.value)


def test_a_key_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """`APIFRAME_API_KEY` with a trailing newline (a `$(cat file)` slip) is refused."""
    monkeypatch.setenv("APIFRAME_API_KEY", KEY + "\n")
    with pytest.raises(RequestValidationError, match="api_key"):
        AsyncApiframe()


def test_valid_settings_are_accepted() -> None:
    """Unlimited phases (None) and a zero retry count are fine."""
    client = AsyncApiframe(KEY, timeout=httpx.Timeout(5.0, read=None), max_retries=0)
    assert client.with_options(timeout=1, max_retries=2) is not client


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"timeout": 0}, "timeout", id="timeout"),
        pytest.param({"timeout": httpx.Timeout(1.0, write=-2)}, "timeout.write", id="write"),
        pytest.param({"max_retries": -1}, "max_retries", id="retries"),
    ],
)
def test_with_options_checks_its_settings(kwargs: dict[str, object], field: str) -> None:
    """`with_options` refuses what the constructor refuses."""
    client = AsyncApiframe(KEY)
    with pytest.raises(RequestValidationError) as caught:
        client.with_options(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.fixture
async def fake_client() -> AsyncIterator[tuple[FakeApiframe, AsyncApiframe]]:
    fake = FakeApiframe()
    retry = RetryPolicy(max_retries=3, initial_backoff=0.001, max_backoff=0.005)
    async with AsyncApiframe(fake.api_key, http_client=fake.client(), retry=retry) as client:
        yield fake, client


async def test_a_view_shares_pool_limiter_pause_and_poller(
    fake_client: tuple[FakeApiframe, AsyncApiframe],
) -> None:
    """The view is the same client underneath: one sender, one HTTP client, one poller."""
    _, client = fake_client
    view = client.with_options(timeout=3.0, max_retries=1)
    assert view._sender is client._sender
    assert view._sender.limiter is client._sender.limiter
    assert view._http_client is client._http_client
    assert view._poller is client._poller
    assert view.base_url == client.base_url


async def test_a_view_uses_its_own_timeout(
    fake_client: tuple[FakeApiframe, AsyncApiframe],
) -> None:
    """A slow reply times out through a view with a short timeout, not through the client."""
    fake, client = fake_client
    quick = client.with_options(timeout=0.05, max_retries=0)
    fake.inject_fault(None, path="/account", delay=0.3)
    with pytest.raises(APITimeoutError):
        await quick.account()
    assert (await client.account()).credits == fake.credits


async def test_a_view_uses_its_own_retries_and_its_429_pauses_the_client(
    fake_client: tuple[FakeApiframe, AsyncApiframe],
) -> None:
    """No retries through the view; the 429 it got still pauses every request of the client."""
    fake, client = fake_client
    fake.inject_fault(Fault.TOO_MANY_REQUESTS, path="/account", retry_after=0.2)
    with pytest.raises(RateLimitError):
        await client.with_options(max_retries=0).account()
    assert client._sender._pause.resume_at > 0
    fake.inject_fault(Fault.TOO_MANY_REQUESTS, path="/account", retry_after=0)
    await client.account()  # the client itself still retries
    assert [c.status for c in fake.calls("/account")] == [429, 429, 200]


async def test_closing_a_view_leaves_the_client_open(
    fake_client: tuple[FakeApiframe, AsyncApiframe],
) -> None:
    """`async with` on a view, and its `aclose()`, close nothing of the client."""
    fake, client = fake_client
    async with client.with_options(timeout=5.0) as view:
        await view.account()
    await view.aclose()
    assert not client._http_client.is_closed
    await client.account()
    assert len(fake.calls("/account")) == 2


async def test_a_view_of_a_view_keeps_the_settings_it_does_not_change(
    fake_client: tuple[FakeApiframe, AsyncApiframe],
) -> None:
    """Settings stack: a view's view changes only what it names."""
    _, client = fake_client
    first = client.with_options(timeout=2.0, max_retries=0)
    second = first.with_options(max_retries=5)
    assert second._call_timeout == httpx.Timeout(2.0)
    assert second._call_retry is not None
    assert second._call_retry.max_retries == 5
    assert client._call_retry is None


@pytest.mark.parametrize(
    ("policy", "kwargs", "field"),
    [
        pytest.param(RetryPolicy, {"max_retries": -1}, "max_retries", id="retries"),
        pytest.param(RetryPolicy, {"max_retries": 2.5}, "max_retries", id="retries-float"),
        pytest.param(RetryPolicy, {"initial_backoff": 0}, "initial_backoff", id="backoff"),
        pytest.param(RetryPolicy, {"max_backoff": float("inf")}, "max_backoff", id="inf"),
        pytest.param(PollPolicy, {"deadline": 0}, "deadline", id="deadline"),
        pytest.param(PollPolicy, {"jitter": 1.0}, "jitter", id="jitter"),
        pytest.param(PollPolicy, {"multiplier": 0.5}, "multiplier", id="multiplier"),
        pytest.param(PollPolicy, {"initial_interval": "1"}, "initial_interval", id="str"),
    ],
)
def test_a_bad_policy_field_is_a_validation_error(
    policy: type[RetryPolicy | PollPolicy], kwargs: dict[str, object], field: str
) -> None:
    """Policies are settings too: a RequestValidationError (a ValueError) naming the field."""
    with pytest.raises(RequestValidationError) as caught:
        policy(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert caught.value.allowed
