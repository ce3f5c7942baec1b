"""A device's life on a secured fleet, as an operator drives it: a token cancelled before use, a board revoked
while it runs, and the same name admitted again with a new key. Real Mosquitto, real serve, real agents."""

from __future__ import annotations

import json
import stat
import time

from tests.system._helpers import wait_for
from tests.system._secured import SecuredFleet


def test_cancel_a_token_revoke_a_running_board_and_readmit_it(secured: SecuredFleet) -> None:
    # Prepare: a server that waits for more boards than there are (no round opens)
    secured.serve("--rounds", "1", "--min-devices", "5", "--round-timeout", "300")
    state = str(secured.state)
    # Execute 1: a token is cancelled before any board used it
    token_file = secured.root / "token-c"
    token_file.write_text(secured.token("c") + "\n")
    cancelled = secured.cli("server", "devices", "revoke", "c", "--state-dir", state)
    enroll_c = secured.cli("edge", "enroll", "--server", secured.url, "--token-file", str(token_file),
                           "--ca", str(secured.ca), "--home", str(secured.root / "home-c"), check=False)  # fmt: skip
    # Assert 1: the token enrolls nothing (its login left the broker with it, or the server refuses it)
    assert "c: cancelled 1 pending token" in cancelled.stdout
    assert enroll_c.returncode != 0, enroll_c.stdout
    assert "cancelled" in enroll_c.stderr or "refused" in enroll_c.stderr, enroll_c.stderr[-1000:]
    assert (
        json.loads(secured.cli("server", "devices", "list", "--state-dir", state, "--json").stdout)["pending_tokens"]
        == []
    )
    # Execute 1b: a token whose login this broker knows, but for another fleet's topics (a board handed the
    # token of a second fleet that shares the broker's logins)
    fleet_name, login, rest = secured.token("d").split(":", 3)[1:]
    other = secured.root / "token-other"
    other.write_text(":".join(["gfl2", f"{fleet_name}-other", login, rest]) + "\n")
    started = time.monotonic()
    enroll_other = secured.cli("edge", "enroll", "--server", secured.url, "--token-file", str(other), "--ca",
                               str(secured.ca), "--home", str(secured.root / "home-d"), check=False)  # fmt: skip
    # Assert 1b: refused at once, saying why (not a 30 s wait that asks whether serve runs)
    assert enroll_other.returncode != 0, enroll_other.stdout
    assert "the token is for another fleet" in enroll_other.stderr, enroll_other.stderr[-1000:]
    assert time.monotonic() - started < 15
    # Execute 2: board b runs, then is revoked
    home_b = secured.enroll("b")
    secured.group.start("b", "-m", "edge_agent", "run", "--home", str(home_b))
    wait_for(lambda: "connected to" in secured.group.log("b"), 60, "b to connect")
    assert "b: revoked" in secured.cli("server", "devices", "revoke", "b", "--state-dir", state).stdout
    # Assert 2: b says once that it was refused, backs off, and its status says so
    wait_for(lambda: "not authorised" in secured.group.log("b"), 30, "b to report the refusal")
    time.sleep(5.0)  # paho's own pace (1-3 s, doubling) would have retried by now
    log_b = secured.group.log("b")
    assert log_b.count("not authorised") == 1, log_b[-3000:]
    assert "trying again every 300 s" in log_b
    assert log_b.count("paho reconnects") <= 1, log_b[-3000:]
    wait_for(lambda: json.loads((home_b / "state" / "status.json").read_text())["state"].startswith("refused"), 15,
             "b's status to say it is refused")  # fmt: skip
    # Execute 3: the name comes back only through --readmit, on a board that enrolls anew
    plain = secured.cli("server", "devices", "add", "b", "--state-dir", state, check=False)
    readmit_file = secured.root / "token-b2"
    secured.cli("server", "devices", "add", "b", "--readmit", "--out", str(readmit_file), "--state-dir", state)
    assert stat.S_IMODE(readmit_file.stat().st_mode) == 0o600  # a secret: never world-readable
    home_b2 = secured.root / "home-b2"
    secured.cli("edge", "enroll", "--server", secured.url, "--token-file", str(readmit_file),
                "--ca", str(secured.ca), "--home", str(home_b2))  # fmt: skip
    # Assert 3: a new identity, not revoked, able to log in
    assert plain.returncode == 2 and "--readmit" in plain.stderr, plain.stderr
    listing = json.loads(secured.cli("server", "devices", "list", "--state-dir", state, "--json").stdout)
    assert {r["device_id"]: r["revoked"] for r in listing["devices"]} == {"b": False}
    assert (home_b2 / "device.key").read_bytes() != (home_b / "device.key").read_bytes()
    user, password = secured.login(home_b2)
    secured.client("b-readmitted", user, password).close()
