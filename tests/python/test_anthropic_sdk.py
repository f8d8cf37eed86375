"""The official `anthropic` SDK against `keel serve`: any model behind keel speaks Messages."""

import anthropic
import pytest

from conftest import MASTER_KEY

PROVIDERS = ["oa", "an", "ge"]

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def client(keel_server):
    return anthropic.Anthropic(base_url=keel_server["base"], api_key=MASTER_KEY, max_retries=0)


@pytest.mark.parametrize("model", PROVIDERS)
def test_messages(client, model):
    message = client.messages.create(
        model=model, max_tokens=64, system="be brief", messages=[{"role": "user", "content": "hello keel"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: hello keel"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3


@pytest.mark.parametrize("model", PROVIDERS)
def test_streaming(client, model):
    with client.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": "stream me please"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: stream me please"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4


@pytest.mark.parametrize("model", PROVIDERS)
@pytest.mark.parametrize("streaming", [False, True])
def test_tools_round_trip(client, model, streaming):
    messages = [{"role": "user", "content": "weather in Paris?"}]
    if streaming:
        with client.messages.stream(model=model, max_tokens=128, tools=[WEATHER], messages=messages) as stream:
            message = stream.get_final_message()
    else:
        message = client.messages.create(model=model, max_tokens=128, tools=[WEATHER], messages=messages)
    assert message.stop_reason == "tool_use"
    tool_use = next(block for block in message.content if block.type == "tool_use")
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"city": "Paris"}
    messages.append({"role": "assistant", "content": message.content})
    messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "rainy"}]})
    final = client.messages.create(model=model, max_tokens=128, tools=[WEATHER], messages=messages)
    assert "rainy" in final.content[0].text


def test_forced_tool_choice(client):
    message = client.messages.create(
        model="oa", max_tokens=64, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "go"}],
    )
    assert [block.type for block in message.content] == ["tool_use"]


def test_models(client):
    ids = [model.id for model in client.models.list()]
    assert "an" in ids and "oa" in ids


def test_error_shapes(client, keel_server):
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="claude-nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert err.value.body["error"]["type"] == "not_found_error"
    assert "claude-nope" in err.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="an", max_tokens=5, messages=[])
    assert err.value.body["type"] == "error"
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="broken", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    bad = anthropic.Anthropic(base_url=keel_server["base"], api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="an", max_tokens=5, messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize("model", PROVIDERS)
def test_count_tokens(client, model):
    count = client.messages.count_tokens(model=model, system="short", messages=[{"role": "user", "content": "one two three four"}])
    assert count.input_tokens == (8 if model == "an" else 12)


def test_local_model_through_messages(client):
    message = client.messages.create(model="local", max_tokens=24, extra_body={"temperature": 0}, messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in message.content[0].text
    assert message.usage.output_tokens <= 24


def test_local_model_tool_use(client):
    message = client.messages.create(
        model="local", max_tokens=200, tools=[WEATHER], tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert message.stop_reason == "tool_use"
    tool_use = next(block for block in message.content if block.type == "tool_use")
    assert tool_use.name == "get_weather" and isinstance(tool_use.input["city"], str)
