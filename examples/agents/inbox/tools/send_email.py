"""send_email: reads {"to", "subject", "body"} on standard input and appends the mail to the
workspace's outbox.jsonl, once per call (keel's idempotency key makes a retry a no-op)."""
import json
import os
import pathlib
import sys

mail = json.load(sys.stdin)
key = os.environ["KEEL_IDEMPOTENCY_KEY"]
outbox = pathlib.Path(os.environ["KEEL_WORKSPACE"]) / "outbox.jsonl"
sent = outbox.read_text().splitlines() if outbox.exists() else []
if any(json.loads(line)["key"] == key for line in sent):
    print(f"already sent to {mail['to']}")
    sys.exit(0)
with outbox.open("a") as out:
    out.write(json.dumps({"key": key, **mail}) + "\n")
print(f"sent to {mail['to']}")
