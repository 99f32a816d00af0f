"""Secrets stay secret: the webhook secret is redacted as the key is, in any JSON spelling."""

from __future__ import annotations

import json

import httpx
import pytest
import respx
from conftest import BASE_URL, FAST_RETRY

from apiframe_async import (
    AsyncApiframe,
    AuthenticationError,
    BadRequestError,
    WebhookReceiver,
    verify_webhook,
)
from apiframe_async._secrets import Redactor

pytestmark = pytest.mark.anyio

KEY = "sk/live+0123456789"
HOOK_SECRET = 'whsec-Zq9/x"y'
UNICODE_SECRET = "clé-secrète-🔑"
SECRET_B = b"x-webhook-secret"


def _pair(char: str) -> str:
    return json.dumps(char)[1:-1].upper().replace("\\U", "\\u")


def _json_escaped(text: str) -> list[str]:
    plain = json.dumps(text)[1:-1]
    return [
        text,
        plain,
        plain.replace("/", "\\/"),
        "".join(f"\\u{ord(c):04X}" if ord(c) < 0x10000 else _pair(c) for c in text),
        json.dumps(text, ensure_ascii=False)[1:-1],
    ]


@pytest.mark.parametrize("secret", [KEY, HOOK_SECRET, UNICODE_SECRET])
def test_every_json_spelling_of_a_secret_is_redacted(secret: str) -> None:
    """Raw, escaped `\\/`, `\\u00XX` in either case, surrogate pairs: all become [redacted]."""
    redact = Redactor(secret)
    for spelling in _json_escaped(secret):
        cleaned = redact(f'{{"msg": "bad value {spelling} here"}}')
        assert cleaned == '{"msg": "bad value [redacted] here"}', spelling
    assert secret not in repr(redact)


async def _client_with(api: respx.MockRouter, **kwargs: object) -> AsyncApiframe:
    http = httpx.AsyncClient(transport=httpx.MockTransport(api.async_handler))
    return AsyncApiframe(KEY, base_url=BASE_URL, http_client=http, retry=FAST_RETRY, **kwargs)  # type: ignore[arg-type]


def _assert_clean(exc: BadRequestError | AuthenticationError, secret: str) -> None:
    for text in (str(exc), exc.body, repr(getattr(exc, "errors", ()))):
        for spelling in _json_escaped(secret):
            assert spelling not in text


async def test_a_webhook_secret_quoted_in_a_400_is_redacted(api: respx.MockRouter) -> None:
    """A 400 echoing the secret sent with a training keeps it out of str, .errors and .body."""
    echo = {"errors": [{"msg": f"bad secret {HOOK_SECRET}", "value": HOOK_SECRET}]}
    api.post("/ai-photo-train").respond(400, content=json.dumps(echo).replace("/", "\\/"))
    async with await _client_with(api) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.train(
                "up-1", webhook_url="https://me.example/h", webhook_secret=HOOK_SECRET
            )
    _assert_clean(caught.value, HOOK_SECRET)
    assert caught.value.errors[0]["value"] == "[redacted]"


async def test_the_receivers_secret_is_redacted_too(api: respx.MockRouter) -> None:
    """The secret a client sends by default (its receiver's) is redacted as well."""
    receiver = WebhookReceiver(UNICODE_SECRET, url="https://me.example/h")
    echo = {"errors": [{"msg": "secret refused", "value": UNICODE_SECRET}]}
    api.post("/ai-photo-train").respond(400, json=echo)
    async with await _client_with(api, webhooks=receiver) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.train("up-1")
    _assert_clean(caught.value, UNICODE_SECRET)


async def test_a_key_echoed_json_escaped_is_redacted(api: respx.MockRouter) -> None:
    """A 401 that quotes the key with `\\/` and `\\u002b` escapes does not reveal it."""
    body = '{"message": "invalid key sk\\/live\\u002B0123456789"}'
    api.get("/account").respond(401, content=body, headers={"content-type": "application/json"})
    async with await _client_with(api) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.account()
    _assert_clean(caught.value, KEY)
    assert "[redacted]" in str(caught.value)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"x-webhook-secret", UNICODE_SECRET.encode())], id="asgi-bytes"),
        pytest.param(
            {"x-webhook-secret": UNICODE_SECRET.encode().decode("latin-1")}, id="latin-1-text"
        ),
        pytest.param({"X-Webhook-Secret": UNICODE_SECRET}, id="unicode-text"),
    ],
)
def test_a_non_ascii_secret_verifies(headers: dict[str, str] | list[tuple[bytes, bytes]]) -> None:
    """However a framework hands the header over, the right non-ASCII secret verifies."""
    assert verify_webhook(headers, UNICODE_SECRET)
    assert not verify_webhook(headers, UNICODE_SECRET[:-1])


async def test_the_receiver_accepts_a_non_ascii_secret_over_asgi() -> None:
    """The ASGI receiver verifies a UTF-8 secret header and refuses a wrong one."""
    receiver = WebhookReceiver(UNICODE_SECRET)
    body = b'{"task_id": "t", "status": "finished"}'
    transport = httpx.ASGITransport(app=receiver)
    async with httpx.AsyncClient(transport=transport, base_url="http://hooks.test") as http:
        right = await http.post("/", content=body, headers={SECRET_B: UNICODE_SECRET.encode()})
        wrong = await http.post("/", content=body, headers={SECRET_B: b"cl\xc3\xa9"})
    assert (right.status_code, wrong.status_code) == (200, 401)
