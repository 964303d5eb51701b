"""The fake_llm fixture: a scripted fake LLM, driven by the official SDKs."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import MessageParam, ToolParam
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from meshbridge.testing import FakeLLM

WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ANTHROPIC_TOOL: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
RESPONSES_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}
PARIS = {"city": "Paris", "units": "celsius", "detail": "a long enough argument to stream"}


def weather(arguments: str) -> str:
    """The test's tool: what the agent answers the model."""
    return json.dumps({"city": json.loads(arguments)["city"], "sky": "sunny"})


async def test_openai_chat_agent_loop(fake_llm: FakeLLM) -> None:
    fake_llm.script.tool_call("get_weather", PARIS).reply("It is sunny in Paris.")
    client = fake_llm.openai
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather?"}]
    first = await client.chat.completions.create(
        model="fake-small", messages=messages, tools=[WEATHER_TOOL]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", PARIS)
    messages += [
        choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": call.id, "content": weather(call.function.arguments)},
    ]
    second = await client.chat.completions.create(
        model="fake-small", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == "It is sunny in Paris."
    assert second.choices[0].finish_reason == "stop"
    sent = fake_llm.received[1].body
    assert sent["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": weather(call.function.arguments),
    }
    assert fake_llm.script.pending == 0


async def test_openai_chat_agent_loop_streamed_with_the_sdks_helper(fake_llm: FakeLLM) -> None:
    fake_llm.script.tool_call("get_weather", PARIS, text="Let me look.").reply("Sunny in Paris.")
    client = fake_llm.openai
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather?"}]
    async with client.chat.completions.stream(
        model="fake-small", messages=messages, tools=[WEATHER_TOOL]
    ) as stream:
        events = [event async for event in stream]
        first = await stream.get_final_completion()
    kinds = [event.type for event in events]
    assert "tool_calls.function.arguments.delta" in kinds
    words = [e.delta for e in events if e.type == "content.delta" and e.delta]
    assert words == ["Let ", "me ", "look."]
    message = first.choices[0].message
    assert message.content == "Let me look."
    (call,) = message.tool_calls or []
    assert json.loads(call.function.arguments) == PARIS
    messages += [
        {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": weather(call.function.arguments)},
    ]
    raw = await client.chat.completions.create(
        model="fake-small",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    async for chunk in raw:
        text += "".join(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    assert text == "Sunny in Paris."
    assert usage is not None
    assert usage.completion_tokens == 3


async def test_openai_responses_agent_loop(fake_llm: FakeLLM) -> None:
    fake_llm.script.tool_call("get_weather", PARIS).reply("Sunny in Paris.")
    client = fake_llm.openai
    first = await client.responses.create(
        model="fake-small", input="Weather in Paris?", tools=[RESPONSES_TOOL]
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", PARIS)
    second = await client.responses.create(
        model="fake-small",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": weather(call.arguments),
            },
        ],
        tools=[RESPONSES_TOOL],
    )
    assert second.output_text == "Sunny in Paris."
    assert second.usage is not None
    assert second.usage.output_tokens == 3
    assert fake_llm.received[1].body["input"][-1]["call_id"] == call.call_id


async def test_openai_responses_agent_loop_streamed_with_the_sdks_helper(
    fake_llm: FakeLLM,
) -> None:
    fake_llm.script.tool_call("get_weather", PARIS, text="Checking.").reply("Sunny in Paris.")
    client = fake_llm.openai
    async with client.responses.stream(
        model="fake-small", input="Weather in Paris?", tools=[RESPONSES_TOOL]
    ) as stream:
        kinds = [event.type async for event in stream]
        first = await stream.get_final_response()
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    assert first.output_text == "Checking."
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert json.loads(call.arguments) == PARIS
    async with client.responses.stream(
        model="fake-small",
        input=[
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": weather(call.arguments),
            },
        ],
    ) as stream:
        deltas = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        second = await stream.get_final_response()
    assert "".join(deltas) == second.output_text == "Sunny in Paris."


async def test_anthropic_agent_loop(fake_llm: FakeLLM) -> None:
    fake_llm.script.tool_call("get_weather", PARIS).reply("Sunny in Paris.")
    client = fake_llm.anthropic
    messages: list[MessageParam] = [{"role": "user", "content": "Weather?"}]
    first = await client.messages.create(
        model="fake-small", max_tokens=100, messages=messages, tools=[ANTHROPIC_TOOL]
    )
    assert first.stop_reason == "tool_use"
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert (use.name, use.input) == ("get_weather", PARIS)
    messages += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": use.id,
                    "content": weather(json.dumps(use.input)),
                }
            ],
        },
    ]
    second = await client.messages.create(
        model="fake-small", max_tokens=100, messages=messages, tools=[ANTHROPIC_TOOL]
    )
    assert second.stop_reason == "end_turn"
    assert [b.text for b in second.content if b.type == "text"] == ["Sunny in Paris."]


async def test_anthropic_agent_loop_streamed_with_the_sdks_helper(fake_llm: FakeLLM) -> None:
    fake_llm.script.tool_call("get_weather", PARIS, text="Checking.").reply("Sunny in Paris.")
    client = fake_llm.anthropic
    messages: list[MessageParam] = [{"role": "user", "content": "Weather?"}]
    async with client.messages.stream(
        model="fake-small", max_tokens=100, messages=messages, tools=[ANTHROPIC_TOOL]
    ) as stream:
        partial = [e.partial_json async for e in stream if e.type == "input_json"]
        first = await stream.get_final_message()
    assert len(partial) > 1
    assert json.loads("".join(partial)) == PARIS
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    use = first.content[1]
    assert use.type == "tool_use"
    assert use.input == PARIS
    messages += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": use.id,
                    "content": weather(json.dumps(use.input)),
                }
            ],
        },
    ]
    async with client.messages.stream(
        model="fake-small", max_tokens=100, messages=messages
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        second = await stream.get_final_message()
    assert text == "Sunny in Paris."
    assert second.usage.output_tokens == 3


async def test_a_scripted_429_carries_retry_after_and_the_sdk_retries_on_it(
    fake_llm: FakeLLM,
) -> None:
    fake_llm.script.error(429, "slow down", retry_after=0.01).reply("After the wait.")
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
    retrying = fake_llm.openai_client(max_retries=1)
    answer = await retrying.chat.completions.create(model="fake-small", messages=messages)
    assert answer.choices[0].message.content == "After the wait."
    assert len(fake_llm.received) == 2
    fake_llm.script.error(429, "slow down", retry_after=7)
    with pytest.raises(openai.RateLimitError) as caught:
        await fake_llm.openai.chat.completions.create(model="fake-small", messages=messages)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.message == "Error code: 429 - slow down"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (529, anthropic.OverloadedError),
    ],
)
async def test_scripted_errors_are_the_anthropic_sdks_errors(
    fake_llm: FakeLLM, status: int, error: type[anthropic.APIStatusError]
) -> None:
    fake_llm.script.error(status, "scripted")
    messages: list[MessageParam] = [{"role": "user", "content": "Hi"}]
    with pytest.raises(error) as caught:
        await fake_llm.anthropic.messages.create(
            model="fake-small", max_tokens=10, messages=messages
        )
    assert caught.value.status_code == status
    assert "scripted" in str(caught.value)


@pytest.mark.parametrize("status", [500, 529])
async def test_scripted_server_errors_reach_openai_responses_callers(
    fake_llm: FakeLLM, status: int
) -> None:
    fake_llm.script.error(status)
    with pytest.raises(openai.InternalServerError) as caught:
        await fake_llm.openai.responses.create(model="fake-small", input="Hi")
    assert caught.value.status_code == status


async def test_a_delay_holds_the_first_token_back(fake_llm: FakeLLM) -> None:
    fake_llm.script.reply("Too late.", delay=30)
    impatient = fake_llm.openai_client(timeout=0.2)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.APITimeoutError):
        await impatient.chat.completions.create(model="fake-small", messages=messages)
    fake_llm.script.reply("In time.", delay=0.01)
    answer = await impatient.chat.completions.create(model="fake-small", messages=messages)
    assert answer.choices[0].message.content == "In time."


async def test_a_stream_cut_midway_fails_the_callers_read_after_what_arrived(
    fake_llm: FakeLLM,
) -> None:
    fake_llm.script.reply("one two three four five", fail_after=2)
    messages: list[MessageParam] = [{"role": "user", "content": "Hi"}]
    seen: list[str] = []

    async def read() -> None:
        async with fake_llm.anthropic.messages.stream(
            model="fake-small", max_tokens=50, messages=messages
        ) as stream:
            async for text in stream.text_stream:
                seen.append(text)

    # mid-stream, the SDK lets its transport's error through (as over TCP)
    with pytest.raises(httpx2.ReadError, match="closed the connection before the end"):
        await read()
    assert seen == ["one ", "two "]


async def test_an_answer_cut_midway_is_a_connection_error(fake_llm: FakeLLM) -> None:
    fake_llm.script.tool_call("get_weather", PARIS, fail_after=1)
    with pytest.raises(openai.APIConnectionError):
        await fake_llm.openai.responses.create(model="fake-small", input="Hi")


async def test_it_records_what_it_received_without_secrets(fake_llm: FakeLLM) -> None:
    client = fake_llm.openai_client(source="agents", api_key_id="key-7")
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
    await client.chat.completions.create(model="fake-large", messages=messages)
    await client.models.list()
    chat, models = fake_llm.received
    assert (chat.method, chat.path) == ("POST", "/v1/chat/completions")
    assert chat.body == {"model": "fake-large", "messages": messages}
    assert (chat.source, chat.api_key_id) == ("agents", "key-7")
    assert chat.headers["authorization"] == "<redacted>"
    assert "sk-fake" not in json.dumps(dict(chat.headers))
    assert chat.headers["content-type"] == "application/json"
    assert (models.method, models.path, models.body) == ("GET", "/v1/models", None)


async def test_without_a_script_the_fake_answers_deterministically(fake_llm: FakeLLM) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there"}]
    first = await fake_llm.openai.chat.completions.create(model="fake-small", messages=messages)
    again = await fake_llm.openai.chat.completions.create(model="fake-small", messages=messages)
    content = first.choices[0].message.content
    assert content
    assert content == again.choices[0].message.content
    responses = await fake_llm.openai.responses.create(model="fake-small", input="Hello there")
    assert responses.output_text
    assert responses.usage is not None
    assert responses.usage.output_tokens == 24


def test_a_script_refuses_what_it_cannot_answer(fake_llm: FakeLLM) -> None:
    with pytest.raises(ValueError, match="status must be 400 to 599, got 200"):
        fake_llm.script.error(200)
    with pytest.raises(ValueError, match="delay must be"):
        fake_llm.script.reply("x", delay=-1)
    assert fake_llm.script.pending == 0
