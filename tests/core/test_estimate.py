"""What a call reserves before it runs, from its request alone."""

from __future__ import annotations

import json

from meshbridge import Estimate, estimate_tokens
from meshbridge._estimate import IMAGE_TOKENS, MAX_TOKENS


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_chat_completions_reserve_their_output_limit_times_n_and_their_prompt() -> None:
    messages = [{"role": "system", "content": "x" * 30}, {"role": "user", "content": "é" * 15}]
    request = body(model="gpt-4o", messages=messages, max_completion_tokens=100, max_tokens=5, n=2)
    estimate = estimate_tokens("POST", "/v1/chat/completions?x=1", request)
    # 30 + 30 bytes of content, 6 + 4 of roles: 70 bytes at 3 a token
    assert estimate == Estimate(input=24, output=200, model="gpt-4o")
    legacy = estimate_tokens("POST", "/v1/chat/completions", body(messages=[], max_tokens=64))
    assert legacy == Estimate(0, 64)


def test_responses_and_messages_read_their_own_fields() -> None:
    responses = body(model="o3", instructions="be brief", input="hi", max_output_tokens=50)
    assert estimate_tokens("POST", "/v1/responses", responses) == Estimate(4, 50, "o3")
    messages = body(model="claude", system=[{"type": "text", "text": "abc"}],
                    messages=[{"role": "user", "content": "hello"}], max_tokens=1024)  # fmt: skip
    assert estimate_tokens("POST", "/v1/messages", messages) == Estimate(6, 1024, "claude")


def test_inline_images_count_a_fixed_size_not_their_base64() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 90_000}}
    source = {"type": "image", "source": {"type": "base64", "data": "B" * 90_000}}
    chat = body(messages=[{"role": "user", "content": [image]}], max_tokens=1)
    anthropic = body(messages=[{"role": "user", "content": [source]}], max_tokens=1)
    assert estimate_tokens("POST", "/v1/chat/completions", chat).input < IMAGE_TOKENS + 20
    assert estimate_tokens("POST", "/v1/messages", anthropic).input < IMAGE_TOKENS + 20


def test_without_an_output_limit_the_default_is_reserved() -> None:
    request = body(messages=[{"role": "user", "content": "hi"}])
    assert estimate_tokens("POST", "/v1/messages", request, default_output=77).output == 77
    assert estimate_tokens("POST", "/v1/chat/completions", request).output == 4096


def test_the_fallback_counts_the_body_and_never_raises() -> None:
    assert estimate_tokens("POST", "/anything", b"x" * 300) == Estimate(100, 4096)
    assert estimate_tokens("POST", "/v1/chat/completions", b"\xff{not json") == Estimate(4, 4096)
    assert estimate_tokens("POST", "/v1/chat/completions", b"[1, 2]") == Estimate(2, 4096)
    assert estimate_tokens("POST", "/v1/messages", b"[" * 100_000).output == 4096
    assert estimate_tokens("POST", "/v1/embeddings", body(input="abc")) == Estimate(6, 0)
    assert estimate_tokens("POST", "/upload", None, content_length=3000) == Estimate(1000, 4096)
    assert estimate_tokens("GET", "/v1/models", None) == Estimate()


def test_absurd_limits_are_capped() -> None:
    request = body(messages=[], max_tokens=10**30, n=10**9)
    assert estimate_tokens("POST", "/v1/chat/completions", request).output == MAX_TOKENS
    bad = body(messages=[], max_tokens=-5)
    assert estimate_tokens("POST", "/v1/chat/completions", bad).output == 4096
