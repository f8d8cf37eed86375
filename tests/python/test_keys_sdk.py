"""Virtual keys through the official SDKs: a key made with the admin API works as the SDKs'
api_key; a model it may not call, a rate limit it hit and a revoked key come back as the
SDKs' own error types (PermissionDeniedError, RateLimitError, AuthenticationError)."""

import json
import os
import subprocess
import time
import urllib.request

import anthropic
import openai
import pytest

from conftest import KEEL, MASTER_KEY


def admin(base, method, path, body=None):
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def key(keel_server):
    base = keel_server["base"]
    admin(base, "POST", "/v1/admin/teams", {"name": "sdk-team"})
    made = admin(base, "POST", "/v1/admin/keys", {"team": "sdk-team", "models": ["oa", "an"], "rpm": 3})
    return made


def test_a_virtual_key_is_an_api_key_to_both_sdks(keel_server, key):
    base = keel_server["base"]
    oa = openai.OpenAI(base_url=base + "/v1", api_key=key["key"], max_retries=0)
    answer = oa.chat.completions.with_raw_response.create(model="oa", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert answer.headers["x-ratelimit-limit-requests"] == "3"
    assert answer.parse().choices[0].message.content.startswith("echo")

    with pytest.raises(openai.PermissionDeniedError) as denied:
        oa.chat.completions.create(model="ge", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert "may not call model `ge`" in str(denied.value)

    an = anthropic.Anthropic(base_url=base, api_key=key["key"], max_retries=0)
    reply = an.messages.create(model="an", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert reply.content[0].text.startswith("echo")
    with pytest.raises(anthropic.PermissionDeniedError):
        an.messages.create(model="ge", max_tokens=8, messages=[{"role": "user", "content": "hi"}])

    # Two calls were admitted of three a minute; the third fits, the fourth is limited.
    oa.chat.completions.create(model="oa", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as limited:
        oa.chat.completions.create(model="oa", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_revoked_key_is_an_authentication_error(keel_server):
    base = keel_server["base"]
    admin(base, "POST", "/v1/admin/teams", {"name": "sdk-revoked"})
    made = admin(base, "POST", "/v1/admin/keys", {"team": "sdk-revoked"})
    oa = openai.OpenAI(base_url=base + "/v1", api_key=made["key"], max_retries=0)
    oa.chat.completions.create(model="oa", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    env = dict(os.environ, KEEL_LOG="warn")
    env.pop("KEEL_CONFIG", None)
    out = subprocess.run([KEEL, "keys", "revoke", made["id"]], cwd=keel_server["workdir"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # The CLI wrote the store; the server reloads it within a second.
    deadline = time.time() + 5
    while True:
        try:
            oa.chat.completions.create(model="oa", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        except openai.AuthenticationError as err:
            assert "has been revoked" in str(err)
            break
        assert time.time() < deadline, "the revocation was not seen"
        time.sleep(0.05)
    listing = admin(base, "GET", "/v1/admin/keys?team=sdk-revoked")
    assert listing["data"][0]["status"] == "revoked"
    assert made["key"] not in json.dumps(listing)
    assert made["key"] not in (keel_server["workdir"] / "serve.log").read_text(), "a virtual key reached the log"
