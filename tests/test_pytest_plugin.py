"""The `apiframe_fake` fixture: a seeded `Faults` in the marker is fresh for every test."""

from __future__ import annotations

import pytest

from apiframe_async.testing import FakeApiframe, Faults

pytestmark = pytest.mark.anyio

SHARED = Faults(rate_500=0.5, rate_429=0.2, seed=7)
_REFERENCE = Faults(rate_500=0.5, rate_429=0.2, seed=7)
EXPECTED = [_REFERENCE.draw() for _ in range(20)]


@pytest.mark.apiframe_fake(faults=SHARED)
async def test_a_seeded_faults_in_the_marker_starts_at_its_seed(
    apiframe_fake: FakeApiframe,
) -> None:
    """Both backends (the same marker object) see the seed's sequence from its start."""
    (faults,) = apiframe_fake._plan.faults
    assert faults is not SHARED
    assert [faults.draw() for _ in range(20)] == EXPECTED


@pytest.mark.apiframe_fake(faults=[SHARED, Faults(rate_503=1.0, paths={"/fetch"})])
async def test_a_list_of_faults_is_fresh_too(apiframe_fake: FakeApiframe) -> None:
    """Each `Faults` of a list is copied fresh, with its settings."""
    first, second = apiframe_fake._plan.faults
    assert first is not SHARED
    assert [first.draw() for _ in range(20)] == EXPECTED
    assert second.paths == frozenset({"/fetch"})
