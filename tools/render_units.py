"""Write the reference units in systemd/ (ExecStart under /usr/local/bin).

`install-service` renders the same text with the installed executable's path;
a test checks that these files match the renderers.

    python tools/render_units.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloud_server.ops._unit import render_broker_sync_units, render_server_unit  # noqa: E402
from edge_agent._unit import CREDENTIALS, EdgeUnit, render_edge_unit  # noqa: E402

# A secured fleet's pair (install-service --broker-dir /etc/genfl/broker)
_SYNC = (
    Path("/usr/local/bin/genfl-server"),
    Path("/etc/genfl/broker"),
    Path("/var/lib/private/genfl-server/security/broker-outbox/acl"),  # a dynamic user's state, not its link
    "plant-3",
)

UNITS = {
    "genfl-edge.service": lambda: render_edge_unit(
        EdgeUnit(Path("/usr/local/bin/genfl-edge"), credentials=CREDENTIALS)
    ),
    "genfl-server.service": lambda: render_server_unit(Path("/usr/local/bin/genfl-server")),
    **{
        name: (lambda name=name: render_broker_sync_units(*_SYNC)[name])
        for name in ("genfl-broker-sync.path", "genfl-broker-sync.service")
    },
}

if __name__ == "__main__":
    for name, render in UNITS.items():
        (ROOT / "systemd" / name).write_text(render())
        print(f"wrote systemd/{name}")
