"""Pytest plugin: fixtures for testing code that uses apiframe-async.

Installed with the package (entry point `pytest11`), it only adds the `apiframe_fake`
fixture and the `apiframe_fake` marker; it imports nothing heavy until a test uses them,
and never needs uvicorn.

Example:
    ```python
    import pytest

    @pytest.mark.anyio
    @pytest.mark.apiframe_fake(fetches_to_finish=2)
    async def test_generate(apiframe_fake):
        async with AsyncApiframe(
            api_key=apiframe_fake.api_key, http_client=apiframe_fake.client()
        ) as client:
            ...
        assert apiframe_fake.generate_count_by_prompt() == {"a prompt": 1}
    ```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from apiframe_async.testing import FakeApiframe

_MARKER = "apiframe_fake"


def pytest_configure(config: pytest.Config) -> None:
    """Register the `apiframe_fake` marker (so `--strict-markers` accepts it)."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**options): keyword arguments for the FakeApiframe of the "
        "apiframe_fake fixture (see apiframe_async.testing.FakeApiframe).",
    )


@pytest.fixture
def apiframe_fake(request: pytest.FixtureRequest) -> FakeApiframe:
    """A fresh `FakeApiframe` for each test: no tasks, full credits, no records.

    Options come from the closest `@pytest.mark.apiframe_fake(**options)` marker. Get an
    in-process HTTP client with `apiframe_fake.client()` (our client:
    `AsyncApiframe(api_key=apiframe_fake.api_key, http_client=apiframe_fake.client())`),
    or a real loopback server with `async with apiframe_fake.serve() as base_url:`
    (needs the `server` extra).

    Example:
        ```python
        @pytest.mark.anyio
        async def test_account(apiframe_fake):
            headers = {"Authorization": apiframe_fake.api_key}
            async with apiframe_fake.client(headers=headers) as http:
                assert (await http.get("/account")).status_code == 200
        ```
    """
    from apiframe_async.testing import FakeApiframe  # noqa: PLC0415 - keep pytest start-up light

    marker = request.node.get_closest_marker(_MARKER)
    options = dict(marker.kwargs) if marker is not None else {}
    if "faults" in options:
        options["faults"] = _fresh(options["faults"])
    return FakeApiframe(**options)


def _fresh(faults: object) -> object:
    """New `Faults` from the marker's: each test starts at the seed, whatever ran before."""
    import attrs  # noqa: PLC0415 - keep pytest start-up light

    from apiframe_async.testing import Faults  # noqa: PLC0415

    # A marker's objects are shared by every test it marks (and both backends of one
    # test): drawing from them would leave the next test mid-sequence.
    if isinstance(faults, Faults):
        return attrs.evolve(faults)
    if faults is None or isinstance(faults, str | bytes):
        return faults
    return [attrs.evolve(f) if isinstance(f, Faults) else f for f in faults]  # type: ignore[attr-defined]
