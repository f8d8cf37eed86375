"""lookup_order: reads {"order_id": ...} on standard input, prints the order as JSON."""
import json
import pathlib
import sys

orders = json.loads((pathlib.Path(__file__).parent / "orders.json").read_text())
order_id = json.load(sys.stdin)["order_id"].strip().upper()
order = orders.get(order_id)
if order is None:
    print(f"no order {order_id}; known orders look like A-1001", file=sys.stderr)
    sys.exit(1)
print(json.dumps({"order_id": order_id, **order}))
