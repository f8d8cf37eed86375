"""read_inbox: prints the mails in mails.json (newest first) as JSON."""
import json
import pathlib

print((pathlib.Path(__file__).parent / "mails.json").read_text())
