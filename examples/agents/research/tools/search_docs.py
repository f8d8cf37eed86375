#!/usr/bin/env python3
"""search_docs: reads {"query": ...} on stdin, prints the lines of the workspace's documents
that share the most words with the query (file:line: text), best first."""
import json
import os
import re
import sys

STOP = {"the", "a", "an", "of", "to", "in", "on", "and", "or", "is", "are", "for", "how", "what", "when", "who", "do", "does", "we", "our", "be", "it", "with", "by", "at", "long", "many", "much"}


def words(text):
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP and len(w) > 1}


def main():
    query = json.load(sys.stdin).get("query", "")
    wanted = words(query)
    if not wanted:
        print("the query has no words to search for", file=sys.stderr)
        sys.exit(1)
    root = os.environ["KEEL_WORKSPACE"]
    hits = []
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                with open(path, encoding="utf-8") as handle:
                    lines = handle.read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            for number, line in enumerate(lines, 1):
                # A word that starts the same counts (backup ~ backups).
                score = sum(1 for w in wanted for v in words(line) if v.startswith(w[:5]))
                if score:
                    hits.append((-score, os.path.relpath(path, root), number, line.strip()))
    hits.sort()
    if not hits:
        print("no document mentions: " + query)
        return
    for _, path, number, line in hits[:8]:
        print(f"{path}:{number}: {line}")


main()
