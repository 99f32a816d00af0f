"""Test helpers for code that uses apiframe-async: a stateful fake of the APIFRAME API.

`FakeApiframe` is an ASGI app that speaks the APIFRAME v1 AI Photos API: it validates
requests, moves tasks along their statuses, charges credits, serves real PNG images,
POSTs webhooks, injects faults (`Faults`, `Fault`), enforces an account's limits
(`TokenBucket`, `ConcurrencyLimit`) and records every request
(`RecordedCall`) and webhook (`WebhookDelivery`) for assertions.

Example:
    ```python
    from apiframe_async.testing import FakeApiframe

    fake = FakeApiframe()
    async with fake.client(headers={"Authorization": fake.api_key}) as http:
        reply = await http.post("/ai-photo-generate", json={
            "training_id": fake.add_trained_model(), "prompt": "TOKMSN in a suit",
        })
    assert fake.generate_count_by_prompt() == {"TOKMSN in a suit": 1}
    ```

With pytest, the `apiframe_fake` fixture gives a fresh `FakeApiframe` per test.
"""

from apiframe_async.testing._fake import FakeApiframe, FakeOptions, run_fake_server
from apiframe_async.testing._faults import Fault, Faults
from apiframe_async.testing._limits import ConcurrencyLimit, TokenBucket
from apiframe_async.testing._png import render_png
from apiframe_async.testing._records import RecordedCall, WebhookDelivery
from apiframe_async.testing._server import FakeServer

__all__ = [
    "ConcurrencyLimit",
    "FakeApiframe",
    "FakeOptions",
    "FakeServer",
    "Fault",
    "Faults",
    "RecordedCall",
    "TokenBucket",
    "WebhookDelivery",
    "render_png",
    "run_fake_server",
]
