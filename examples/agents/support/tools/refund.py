"""refund: reads {"order_id", "amount", "reason"} on standard input and records the refund in
the workspace's refunds.log, once per call: keel's idempotency key makes a retried or
resumed call a no-op."""
import json
import os
import pathlib
import sys

args = json.load(sys.stdin)
key = os.environ["KEEL_IDEMPOTENCY_KEY"]
log = pathlib.Path(os.environ["KEEL_WORKSPACE"]) / "refunds.log"
done = log.read_text().splitlines() if log.exists() else []
if any(line.startswith(key + " ") for line in done):
    print(f"refund for {args['order_id']} was already made")
    sys.exit(0)
with log.open("a") as out:
    out.write(f"{key} {args['order_id']} {args['amount']} {json.dumps(args['reason'])}\n")
print(f"refunded {args['amount']} on order {args['order_id']}")
