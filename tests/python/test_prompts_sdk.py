"""Registry prompts through the official SDKs: a prompt pushed with `keel prompts push` is
named in a chat request (`extra_body`) instead of messages; keel renders it, and an unknown
prompt or a missing variable comes back as the SDK's own error types."""

import json
import os
import subprocess

import anthropic
import openai
import pytest

from conftest import KEEL, MASTER_KEY

PROMPT = {
    "messages": [
        {"role": "system", "content": "You help {{ company }} customers."},
        {"role": "user", "content": "{{ question }}"},
    ],
    "config": {"temperature": 0.1, "max_tokens": 64},
}


@pytest.fixture(scope="module")
def pushed(keel_server):
    workdir = keel_server["workdir"]
    (workdir / "support.json").write_text(json.dumps(PROMPT))
    env = dict(os.environ, KEEL_LOG="warn")
    env.pop("KEEL_CONFIG", None)
    out = subprocess.run(
        [KEEL, "prompts", "push", "sdk-support", "support.json", "--label", "production", "--json"],
        cwd=workdir, env=env, capture_output=True, text=True, check=True,
    )
    assert json.loads(out.stdout)["version"] == 1
    return keel_server


def variables(question):
    return {"company": "Acme", "question": question}


def test_openai_sdk_names_a_prompt(pushed):
    client = openai.OpenAI(base_url=pushed["base"] + "/v1", api_key=MASTER_KEY)
    # The SDK requires `messages`; an empty list beside `prompt` is taken as none.
    answer = client.chat.completions.create(
        model="oa", messages=[], extra_body={"prompt": {"name": "sdk-support", "variables": variables("where is my parcel?")}}
    )
    assert answer.choices[0].message.content == "echo: where is my parcel?"
    raw = client.chat.completions.with_raw_response.create(
        model="oa", messages=[], extra_body={"prompt": {"name": "sdk-support", "variables": variables("hi")}}
    )
    assert raw.headers["x-keel-prompt"] == "sdk-support@1"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="oa", messages=[], extra_body={"prompt": {"name": "nope"}})
    assert "no prompt `nope`" in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="oa", messages=[], extra_body={"prompt": {"name": "sdk-support", "variables": {"company": "Acme"}}})
    assert "`question`" in bad.value.message


def test_anthropic_sdk_names_a_prompt(pushed):
    client = anthropic.Anthropic(base_url=pushed["base"], api_key=MASTER_KEY)
    answer = client.messages.create(
        model="an", max_tokens=64, messages=[], extra_body={"prompt": {"name": "sdk-support", "label": "production", "variables": variables("refund?")}}
    )
    assert answer.content[0].text.endswith("refund?")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="an", max_tokens=64, messages=[], extra_body={"prompt": {"name": "sdk-support", "label": "staging"}})
