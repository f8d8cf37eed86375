"""The official `openai` SDK against `keel serve`, as a user's script would use it."""

import json

import openai
import pytest

from conftest import MASTER_KEY, UPSTREAM_KEY

PROVIDERS = ["oa", "an", "ge"]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}


@pytest.fixture(scope="module")
def client(keel_server):
    return openai.OpenAI(base_url=keel_server["base"] + "/v1", api_key=MASTER_KEY, max_retries=0)


@pytest.mark.parametrize("model", PROVIDERS)
def test_chat(client, model):
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello keel"}],
        temperature=0.1,
        seed=3,
        user="u1",
    )
    assert completion.choices[0].message.content == "echo: hello keel"
    assert completion.choices[0].finish_reason == "stop"
    # "oa" is OpenAI to OpenAI, the same-format lane: the answer comes back as the provider
    # sent it, naming the model that answered; translated answers name keel's alias.
    assert completion.model == ("gpt-4o-mini" if model == "oa" else model)
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3


@pytest.mark.parametrize("model", PROVIDERS)
def test_streaming_with_usage(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "stream these words"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == "echo: stream these words"
    assert finish == "stop"
    assert usage.completion_tokens == 4


@pytest.mark.parametrize("model", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
def test_tools_across_providers(client, model, stream):
    messages = [{"role": "user", "content": "weather in Paris?"}]
    response = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER], tool_choice="required", stream=stream)
    if stream:
        calls = {}
        for chunk in response:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    if delta.function and delta.function.name:
                        call["name"] = delta.function.name
                    if delta.function and delta.function.arguments:
                        call["arguments"] += delta.function.arguments
        calls = [calls[i] for i in sorted(calls)]
    else:
        assert response.choices[0].finish_reason == "tool_calls"
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in response.choices[0].message.tool_calls]
    assert len(calls) == 1
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "c"}
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": calls[0]["id"], "type": "function", "function": {"name": "get_weather", "arguments": calls[0]["arguments"]}}]})
    messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": "18 degrees"})
    final = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert "18 degrees" in final.choices[0].message.content


@pytest.mark.parametrize("model", PROVIDERS)
def test_json_schema(client, model):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "score": {"type": "integer", "minimum": 0}, "ok": {"type": "boolean"}},
        "required": ["name", "score", "ok"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "rate it"}],
        response_format={"type": "json_schema", "json_schema": {"name": "rating", "schema": schema, "strict": True}},
    )
    assert json.loads(completion.choices[0].message.content) == {"name": "Paris", "score": 0, "ok": True}


def test_image_parts(client):
    completion = client.chat.completions.create(
        model="an",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
        ]}],
    )
    assert completion.choices[0].message.content == "echo: describe (+1 images)"


def test_embeddings(client):
    result = client.embeddings.create(model="embed", input=["first", "second"], dimensions=12)
    assert [item.index for item in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 12
    norm = sum(v * v for v in result.data[0].embedding)
    assert abs(norm - 1.0) < 1e-4


def test_models(client):
    ids = [model.id for model in client.models.list()]
    assert ids == [
        "an", "broken", "claude-sonnet-4-5", "codex", "embed", "fallback", "ge", "local", "local-embed", "local-long", "oa",
    ]


def test_fallback_is_invisible_to_the_client(client):
    raw = client.chat.completions.with_raw_response.create(model="fallback", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-keel-provider"] == "an"
    assert int(raw.headers["x-keel-overhead-us"]) >= 0
    assert raw.parse().choices[0].message.content == "echo: x"


def test_error_shapes(client, keel_server):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
    assert "unknown model `gpt-nope`" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="oa", messages=[])
    assert err.value.code == "invalid_request"
    with pytest.raises(openai.BadRequestError) as err:
        # Checked where keel translates; the same-format lane leaves the schema to the provider.
        client.chat.completions.create(model="an", messages=[{"role": "user", "content": "x"}], tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}])
    assert "must have \"type\": \"object\"" in err.value.message
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 502
    assert UPSTREAM_KEY not in str(err.value.body)
    bad = openai.OpenAI(base_url=keel_server["base"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_local_model_chat_and_stream(client):
    completion = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_tokens=24
    )
    assert "Paris" in completion.choices[0].message.content
    assert completion.usage.completion_tokens <= 24
    stream = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0,
        max_tokens=24, stream=True, stream_options={"include_usage": True},
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == completion.choices[0].message.content


def test_local_model_json_schema_always_parses(client):
    # Properties out of alphabetical order: the model must write them in the schema's order.
    schema = {"type": "object", "properties": {"rank": {"type": "integer", "minimum": 1, "maximum": 10}, "city": {"type": "string"}},
              "required": ["rank", "city"], "additionalProperties": False}
    for temperature in (0, 1):
        completion = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "Pick a city."}], temperature=temperature, seed=3,
            response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}}, max_tokens=100,
        )
        value = json.loads(completion.choices[0].message.content)
        assert list(value) == ["rank", "city"] and isinstance(value["city"], str) and 1 <= value["rank"] <= 10


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["required", "named", "auto"])
def test_local_model_tool_calls_validate(client, stream, choice):
    tool_choice = {"type": "function", "function": {"name": "get_weather"}} if choice == "named" else choice
    response = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "What is the weather in Paris in celsius?"}],
        tools=[WEATHER], tool_choice=tool_choice, temperature=0, stream=stream, max_tokens=200,
    )
    if stream:
        calls, text, pieces = {}, "", 0
        for chunk in response:
            for c in chunk.choices:
                text += c.delta.content or ""
                for delta in c.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                    if delta.function.name:
                        call["name"] = delta.function.name
                    call["arguments"] += delta.function.arguments or ""
                    pieces += bool(delta.function.arguments)
        calls = list(calls.values())
        # Arguments stream as the model writes them, not in one piece at the end.
        assert pieces > len(calls) or not calls
    else:
        message = response.choices[0].message
        text = message.content or ""
        calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or []]
    if choice == "auto" and not calls:
        assert text  # the model chose to answer in words
        return
    assert calls, text
    for call in calls:
        assert call["name"] == "get_weather"
        args = json.loads(call["arguments"])
        assert set(args) == {"city", "unit"} and isinstance(args["city"], str) and args["unit"] in ("c", "f")


def test_local_embeddings(client):
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Quarterly revenue grew by ten percent."]
    result = client.embeddings.create(model="local-embed", input=texts)
    vectors = [item.embedding for item in result.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    cosine = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert cosine(vectors[0], vectors[1]) > 0.8 > cosine(vectors[0], vectors[2])
    assert result.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="local-embed", input="x", dimensions=12)


def test_local_model_names_an_unsupported_schema_keyword(client):
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
        )
    assert "`uniqueItems` (at /properties/tags)" in err.value.message
