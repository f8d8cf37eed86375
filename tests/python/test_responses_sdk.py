"""The Responses API through the official `openai` SDK and OpenAI's Agents SDK, against
`keel serve`: every provider (and the local model) answers it, whole and streamed; tool
calls continue through `previous_response_id`; stored responses are retrieved, listed and
deleted."""

import asyncio
import json

import openai
import pytest

from conftest import MASTER_KEY

PROVIDERS = ["oa", "an", "ge"]

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def client(keel_server):
    return openai.OpenAI(base_url=keel_server["base"] + "/v1", api_key=MASTER_KEY, max_retries=0)


@pytest.mark.parametrize("model", PROVIDERS)
def test_create_and_retrieve(client, model):
    response = client.responses.create(
        model=model, instructions="be brief", input="hello keel", max_output_tokens=64, metadata={"run": "sdk"}
    )
    assert response.status == "completed"
    assert response.output_text == "echo: hello keel"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.metadata == {"run": "sdk"}
    again = client.responses.retrieve(response.id)
    assert again.output_text == response.output_text
    assert again.id == response.id


@pytest.mark.parametrize("model", PROVIDERS)
def test_stream_events(client, model):
    types = []
    text = ""
    final = None
    with client.responses.create(model=model, input="stream me please", stream=True) as stream:
        for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.completed":
                final = event.response
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert text == "echo: stream me please"
    assert final.output_text == text
    assert final.usage.total_tokens == final.usage.input_tokens + final.usage.output_tokens


def test_stream_helper_accumulates(client):
    with client.responses.stream(model="oa", input="helper") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == "echo: helper"


@pytest.mark.parametrize("model", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
def test_function_calls_continue_with_previous_response_id(client, model, stream):
    if stream:
        with client.responses.stream(model=model, input="weather in Oslo?", tools=[WEATHER]) as events:
            for _ in events:
                pass
            first = events.get_final_response()
    else:
        first = client.responses.create(model=model, input="weather in Oslo?", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    args = json.loads(calls[0].arguments)
    assert set(args) == {"city", "unit"}
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "cloudy, 9C"}],
    )
    assert second.output_text.startswith("tool results: ") and "cloudy, 9C" in second.output_text
    assert second.previous_response_id == first.id


def test_structured_output_parses(client):
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        population: int

    parsed = client.responses.parse(model="an", input="a city", text_format=City)
    assert isinstance(parsed.output_parsed, City)


def test_input_items_and_delete(client):
    response = client.responses.create(
        model="oa",
        input=[
            {"role": "developer", "content": "be kind"},
            {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"role": "user", "content": "second"},
        ],
    )
    items = list(client.responses.input_items.list(response.id, order="asc"))
    assert [item.content[0].text for item in items] == ["be kind", "first", "second"]
    paged = client.responses.input_items.list(response.id, limit=1)
    assert [item.content[0].text for item in paged.data] == ["second"]
    assert paged.has_more
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="oa", input="more", previous_response_id=response.id)


def test_errors_are_typed(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="oa", input="x", tools=[{"type": "web_search"}])
    assert "web_search" in err.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="x")


def test_local_model_answers_the_responses_api(client):
    response = client.responses.create(
        model="local", input="What is the capital of France?", temperature=0, max_output_tokens=24
    )
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    # A cut-short answer ends with `response.incomplete`, as OpenAI's does.
    with client.responses.create(model="local", input="Say hello.", temperature=0, max_output_tokens=8, stream=True) as stream:
        events = list(stream)
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    if final.type == "response.incomplete":
        assert final.response.incomplete_details.reason == "max_output_tokens"
    assert final.response.output_text.strip()
    assert 0 < final.response.usage.output_tokens <= 8


def test_agents_sdk_runs_a_tool_loop(keel_server):
    from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    seen = []

    @function_tool
    def get_weather(city: str, unit: str) -> str:
        """Current weather for a city."""
        seen.append((city, unit))
        return f"sunny in {city}"

    async def run():
        api = openai.AsyncOpenAI(base_url=keel_server["base"] + "/v1", api_key=MASTER_KEY, max_retries=0)
        agent = Agent(
            name="weather",
            instructions="Answer with the weather tool.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model="an", openai_client=api),
        )
        return await Runner.run(agent, "weather in Rome?", run_config=RunConfig(tracing_disabled=True))

    result = asyncio.run(run())
    assert seen, "the agent called the tool"
    assert "sunny in" in result.final_output
