"""Follow docs/deploy.md literally, on this one machine, as a new operator would.

The shell blocks of sections 2 (an open fleet) and 3 (the secured fleet) are read from the document and run in
order, so that a step the document changes is the step that runs. One machine stands in for the server and the
boards; what it cannot do as written is done the nearest honest way, and the JSON report says so per step:

* every absolute path of the document lives under a folder of its own per machine (``server/`` and
  ``boards/NAME/``): ``/etc/genfl`` is ``ROOT/etc/genfl`` (a board's is handed to its commands as
  ``GENFL_EDGE_HOME``), ``/var/lib/...`` and ``/srv/genfl/data`` likewise; ``/opt/genfl/bin`` is this
  checkout's ``.venv/bin`` (section 1, the install, is checked, not run: the checkout is installed already);
* host names are ``localhost`` (the broker's certificate is issued for that name), port 8883 is a free port, the
  open fleet's name gets a random suffix (the machine's Mosquitto is shared), ``press-07`` is each board's name
  in turn (the secured server waits for ``--min-devices`` boards: that many are enrolled);
* ``systemctl enable --now`` runs each unit as systemd would, from the file ``install-service`` wrote: its
  ``User=`` or a dynamic uid of its own, ``StateDirectory=`` handed to that uid, ``LoadCredential=`` copies
  readable by that uid only, ``EnvironmentFile=``, and a ``.path`` unit's ``PathChanged=`` watched. The sandbox
  options are not applied (``install-service`` refuses paths they would hide);
* a board's image folder is made up: small colour images of a few of the fleet's classes each.

    python tools/deploy_walkthrough.py --out bench/deploy-walkthrough.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cloud_server.broker._broker import free_port
from cloud_server.broker._broker_files import BrokerFiles
from protocol import GenflError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deploy.md"
BIN = Path(sys.executable).parent
SECTIONS = ("## 1.", "## 2.", "## 3.")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DYNAMIC_UIDS = iter(range(61184, 65519))  # systemd's range for DynamicUser=
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}  # an operator's defaults otherwise
VENV_SITE = next(Path(p) for p in sys.path if p.endswith("site-packages"))


@dataclass
class Step:
    section: str
    written: str  # the command as the document writes it
    ran: str = ""  # what ran here (or how it was stood in for)
    machine: str = ""
    rc: int | None = None
    seconds: float = 0.0
    output: str = ""


@dataclass
class Machine:
    name: str
    root: Path
    board: str = ""  # the board's name (press-07 in the document)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")


def doc_commands(text: str) -> list[tuple[str, str]]:
    """(section, command) for every command line of the ``sh`` blocks of SECTIONS, continuations joined."""
    found: list[tuple[str, str]] = []
    section, block, pending = "", False, ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line
        if line.startswith("```"):
            block = line.strip() == "```sh" and section.startswith(SECTIONS)
            continue
        if not block:
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        command = _strip_comment(pending).strip()
        pending = ""
        if command:
            found.append((section, re.sub(r"\s+", " ", command)))
    return found


def _strip_comment(line: str) -> str:
    """The line without a ``#`` comment outside quotes."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


class Walkthrough:
    def __init__(self, work: Path, boards: int) -> None:
        self.work = work
        self.port = free_port()
        self.fleet = f"trial-{uuid.uuid4().hex[:8]}"
        self.server = Machine("server", work / "server")
        self.boards = [Machine(f"board-{i}", work / "boards" / f"press-{7 + i:02d}", f"press-{7 + i:02d}")
                       for i in range(boards)]  # fmt: skip
        self.steps: list[Step] = []
        self.watchers: list[threading.Event] = []
        self.uids: dict[str, int] = {}
        self.opt = work / "opt" / "genfl"  # /opt/genfl: one for every machine here

    def server_for(self, board: Machine) -> Machine:
        """The server, running a command about ``board`` (``press-07`` in the document is that board's name)."""
        return Machine("server", self.server.root, board.board)

    # -- rewriting ---------------------------------------------------------------------------------------------

    def rewrite(self, command: str, machine: Machine) -> str:
        out = command.replace("/opt/genfl", str(self.opt))
        out = re.sub(r"(?<![\w./-])(/(?:etc|var/lib(?:/private)?|srv|tmp)/genfl[\w./-]*)",
                     lambda m: str(machine.path(m.group(1))), out)  # fmt: skip
        out = re.sub(r"\b(SERVER|broker\.plant-3\.example|broker\.lan)\b", lambda m: "localhost"
                     if m.group(1) != "SERVER" else "127.0.0.1", out)  # fmt: skip
        out = out.replace("8883", str(self.port)).replace("--fleet trial ", f"--fleet {self.fleet} ")
        if machine.board:
            out = out.replace("press-07", machine.board)
        words = out.split()
        if words and words[0] in ("genfl-server", "genfl-edge"):
            if words[1:2] == ["install-service"]:  # this machine's /etc/systemd/system is not the stand-in's
                out += f" --root {machine.root}"
            out = f"{self.opt}/bin/{out}"
        return out

    # -- running -----------------------------------------------------------------------------------------------

    def run(self, section: str, written: str, machine: Machine, background: str = "") -> Step:
        step = Step(section, written, machine=machine.name)
        self.steps.append(step)
        started = time.monotonic()
        for part in (p.strip() for p in written.split("&&")):
            part = re.sub(r"(^|\|\s*)sudo ", r"\1", part)
            if part.startswith("systemctl "):
                step.ran += self._systemctl(part, machine) + "; "
                step.rc = 0
                continue
            command = self.rewrite(part, machine)
            step.ran += command + "; "
            env = {**ENV}
            if machine.board:
                env["GENFL_EDGE_HOME"] = str(machine.path("/etc/genfl"))
            cwd = machine.root
            if background and part.split()[:2] == background.split()[:2]:
                log = open(machine.root / f"{part.split()[0]}-{len(machine.processes)}.log", "wb")  # noqa: SIM115
                machine.processes.append(subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=log,
                                                          stderr=subprocess.STDOUT))  # fmt: skip
                step.rc = 0
                continue
            done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=600)  # fmt: skip
            step.output += (done.stdout + done.stderr)[-3000:]
            step.rc = done.returncode
            if done.returncode != 0:
                break
        step.seconds = round(time.monotonic() - started, 1)
        print(f"[{step.rc}] {machine.name}: {written[:110]}", flush=True)
        if step.rc != 0:
            raise RuntimeError(f"step failed: {written}\n{step.ran}\n{step.output}")
        return step

    def _systemctl(self, part: str, machine: Machine) -> str:
        words = part.split()
        if words[1] == "daemon-reload":
            return "(daemon-reload: the unit files are read at start)"
        assert words[1:3] == ["enable", "--now"], part
        started = []
        for name in words[3:]:
            unit = name if "." in name else f"{name}.service"
            started.append(self.start_unit(machine, unit))
        return "started " + ", ".join(started)

    def start_unit(self, machine: Machine, unit: str) -> str:
        text = machine.path(f"/etc/systemd/system/{unit}").read_text()
        settings: dict[str, list[str]] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                settings.setdefault(key.strip(), []).append(value.strip())
        if unit.endswith(".path"):
            watched = machine.path(settings["PathChanged"][0])
            target = settings["Unit"][0]
            stop = threading.Event()
            self.watchers.append(stop)
            threading.Thread(target=self._watch, args=(machine, watched, target, stop), daemon=True).start()
            return f"{unit} (watching {watched})"
        uid, gid = self._user(unit, settings)
        env = {**ENV}
        for spec in settings.get("EnvironmentFile", []):
            path = machine.path(spec.lstrip("-"))
            if path.exists():
                for line in path.read_text().splitlines():
                    key, sep, value = line.partition("=")
                    if sep and not line.startswith("#"):
                        env[key.strip()] = value.strip().strip("'\"")
        for name in settings.get("StateDirectory", []):
            state = machine.path(f"/var/lib/{name}")
            if settings.get("DynamicUser") == ["yes"]:  # systemd keeps it in /var/lib/private, its name a link
                private = machine.path(f"/var/lib/private/{name}")
                private.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(private.parent, 0o711)  # 0700 there, and the unit sees it through a mount of its own
                if state.is_dir() and not state.is_symlink():
                    state.rename(private)  # what an earlier install (or a static user) left there moves in
                private.mkdir(exist_ok=True)
                if not state.is_symlink():
                    state.symlink_to(Path("private") / name)
                state = private
            state.mkdir(parents=True, exist_ok=True)
            _chown_tree(state, uid, gid)
            os.chmod(state, int(settings.get("StateDirectoryMode", ["0755"])[0], 8))
        credentials = machine.path(f"/run/credentials/{unit}")
        for spec in settings.get("LoadCredential", []):
            name, _, source = spec.partition(":")
            credentials.mkdir(parents=True, exist_ok=True, mode=0o500)
            shutil.copyfile(machine.path(source), credentials / name)
            os.chmod(credentials / name, 0o400)
            os.chown(credentials / name, uid, gid)
            os.chown(credentials, uid, gid)
        exec_start = settings["ExecStart"][0].replace("%d", str(credentials))
        words = []
        for word in exec_start.split():
            words += env.get(word[1:], "").split() if word.startswith("$") else [word]
        command = [words[0], *(self.rewrite(word, machine) for word in words[1:])]
        env["HOME"] = "/"  # as systemd sets it for a dynamic user
        if machine.board:  # `genfl-edge status` (GENFL_EDGE_HOME/state) reads the state the unit writes, as
            # root's /var/lib/genfl-edge is both
            link = machine.path("/etc/genfl/state")
            if link.is_dir() and not link.is_symlink() and not any(link.iterdir()):
                link.rmdir()  # what `enroll` made for GENFL_EDGE_HOME
            if not link.exists():
                link.symlink_to(machine.path("/var/lib/genfl-edge"))
        cwd = machine.path(settings.get("WorkingDirectory", ["/"])[0])
        as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"] if uid else []
        if settings.get("Type") == ["oneshot"]:
            done = subprocess.run(as_user + command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{unit} failed: {done.stdout}{done.stderr}")
            return f"{unit}: {done.stdout.strip()}"
        log = open(machine.root / f"{unit}.log", "wb")  # noqa: SIM115
        machine.processes.append(subprocess.Popen(as_user + command, cwd=cwd, env=env, stdout=log,
                                                  stderr=subprocess.STDOUT))  # fmt: skip
        return f"{unit} as uid {uid}: {' '.join(command)}"

    def _user(self, unit: str, settings: dict[str, list[str]]) -> tuple[int, int]:
        if "User" in settings:
            account = pwd.getpwnam(settings["User"][0])
            return account.pw_uid, account.pw_gid
        if settings.get("DynamicUser") == ["yes"]:
            uid = self.uids.setdefault(unit, next(DYNAMIC_UIDS))
            return uid, uid
        return 0, 0

    def _watch(self, machine: Machine, watched: Path, target: str, stop: threading.Event) -> None:
        """PathChanged=: run the target each time the file is replaced, written or touched; as systemd, miss what
        changes while the target runs."""
        seen = _signature(watched)
        while not stop.wait(0.2):
            if _signature(watched) != seen:
                try:
                    print(f"      {watched.name} changed: {self.start_unit(machine, target)}", flush=True)
                except RuntimeError as exc:
                    print(f"      {target} FAILED: {exc}", flush=True)
                seen = _signature(watched)

    def stop(self) -> None:
        for stop in self.watchers:
            stop.set()
        for machine in [self.server, *self.boards]:
            for process in machine.processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in machine.processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        for pid_file in self.work.rglob("mosquitto.pid"):  # only a mosquitto this tour started, never the pid's
            with contextlib.suppress(OSError, GenflError):  # whatever else the file may name
                pid = BrokerFiles(pid_file.parent, self.fleet).broker_pid()
                if pid is not None:
                    os.kill(pid, signal.SIGTERM)


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def _chown_tree(folder: Path, uid: int, gid: int) -> None:
    for parent, _, files in os.walk(folder):
        os.chown(parent, uid, gid)
        for name in files:
            os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)


def make_board_data(folder: Path, seed: int, per_class: int = 24) -> None:
    """A board's images: 4 of the fleet's classes, 32x32 colour PNGs whose mean colour follows the class."""
    rng = np.random.default_rng(seed)
    for label in rng.choice(len(CLASSES), size=4, replace=False):
        target = folder / CLASSES[label]
        target.mkdir(parents=True, exist_ok=True)
        tint = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256])
        for k in range(per_class):
            image = np.clip(rng.normal(tint, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(target / f"{k:03d}.png")


def wait_for(what: str, predicate, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def walk(tour: Walkthrough) -> None:
    text = DOC.read_text()
    commands = doc_commands(text)
    for machine in [tour.server, *tour.boards]:
        machine.root.mkdir(parents=True)
        os.chmod(machine.root, 0o755)  # a service's own user walks through it, as through /
    for i, board in enumerate(tour.boards):
        make_board_data(board.path("/srv/genfl/data"), seed=i)
        os.chmod(board.path("/srv"), 0o755)
    try:
        _section_1(tour, [c for s, c in commands if s.startswith("## 1.")])
        open_fleet = [c for s, c in commands if s.startswith("## 2.")]
        secured = [c for s, c in commands if s.startswith("## 3.")]
        _section_2(tour, open_fleet, text)
        _section_3(tour, secured)
    finally:
        tour.stop()


def _section_1(tour: Walkthrough, commands: list[str]) -> None:
    """The install. The virtual environment is made as written; the package comes from this checkout's
    environment (nothing is downloaded here): a ``.pth`` file adds its packages, its console scripts are copied
    with the new environment's ``#!`` line. Linking into ``/usr/local/bin`` is left out (``genfl-server`` and
    ``genfl-edge`` are the environment's), and the broker is the one this machine has."""
    section = "## 1."
    for command in commands:
        words = command.replace("sudo ", "").split()
        if words[1:3] == ["-m", "venv"]:
            if not tour.opt.exists():
                tour.run(section, command, tour.server)
        elif words[0].endswith("/pip"):
            step = Step(section, command, machine="every machine")
            site = next((tour.opt / "lib").glob("python3*/site-packages"))
            if not (tour.opt / "bin" / "genfl-server").exists():
                (site / "genfl-checkout.pth").write_text(f"import site; site.addsitedir({str(VENV_SITE)!r})\n")
                for program in ("genfl-server", "genfl-edge"):
                    script = (BIN / program).read_text().split("\n", 1)[1]
                    target = tour.opt / "bin" / program
                    target.write_text(f"#!{tour.opt / 'bin' / 'python'}\n{script}")
                    target.chmod(0o755)
            check = subprocess.run([tour.opt / "bin" / "genfl-server", "--version"], capture_output=True, text=True)
            step.ran = f"stand-in: {site / 'genfl-checkout.pth'} adds this checkout's installed packages"
            step.rc, step.output = check.returncode, check.stdout + check.stderr
            tour.steps.append(step)
            if check.returncode != 0:
                raise RuntimeError(f"the stand-in install does not run: {step.output}")
        elif words[:2] == ["ln", "-s"] or words[:2] == ["apt", "install"]:
            found = shutil.which(words[-1]) if words[0] == "apt" else "genfl commands run from the environment"
            tour.steps.append(Step(section, command, ran=f"stand-in: {found}", machine="server", rc=0 if found else 1))
            if not found:
                raise RuntimeError(f"{words[-1]} is not installed here")
        else:
            raise RuntimeError(f"section 1 has a step this walkthrough does not know: {command}")


def _section_2(tour: Walkthrough, commands: list[str], text: str) -> None:
    section = "## 2."
    serve = next(c for c in commands if c.startswith("genfl-server serve"))
    run = next(c for c in commands if c.startswith("genfl-edge run"))
    tour.run(section, serve, tour.server, background="genfl-server serve")
    for board in tour.boards[:2]:  # --min-devices 2
        tour.run(section, run, board, background="genfl-edge run")
    checkpoint = tour.server.path("/tmp/genfl-server/checkpoints/round-0001.safetensors")
    wait_for("the open fleet's first round", checkpoint.exists, 600)
    for machine in [tour.server, *tour.boards[:2]]:  # the open fleet has shown its rounds: stop it
        for process in machine.processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        machine.processes.clear()
    # The export and predict of the prose, checked to be written there as run
    export = "genfl-server export --state-dir /tmp/genfl-server --format onnx --out model.onnx"
    assert export in " ".join(text.split()), export
    tour.run(section, export, tour.server)
    model = tour.server.root / "model.onnx"
    images = sorted(tour.boards[0].path("/srv/genfl/data").rglob("*.png"))[:3]
    predict = f"genfl-edge predict --model {model} " + " ".join(map(str, images))
    assert "genfl-edge predict --model model.onnx" in " ".join(text.split())
    step = tour.run(section, predict, tour.boards[0])
    assert all(image.name in step.output for image in images), step.output


def _section_3(tour: Walkthrough, commands: list[str]) -> None:
    section = "## 3."
    add = next(i for i, c in enumerate(commands) if c.startswith("genfl-server devices add") and "--readmit" not in c)
    once, per_board_server = commands[:add], commands[add]
    readmit_at = next(i for i, c in enumerate(commands) if "--readmit" in c)
    per_board = commands[add + 1 : readmit_at]
    readmit = commands[readmit_at:]
    for command in once:
        background = "mosquitto -c" if command.startswith("mosquitto") else ""
        tour.run(section, command.replace(" -d", "") if background else command, tour.server, background=background)
        if background:
            wait_for("the broker's pid file", lambda: tour.server.path("/etc/genfl/broker/mosquitto.pid").exists(), 30)
    wait_for("serve to start", lambda: "serving fleet" in _log(tour.server, "genfl-server.service"), 120)
    min_devices = int(re.search(r"--min-devices (\d+)", " ".join(once)).group(1))  # type: ignore[union-attr]
    for board in tour.boards[:min_devices]:
        tour.run(section, per_board_server, tour.server_for(board))
        # "copy it and /etc/genfl/broker/ca.crt to the board however you hand out secrets"
        shutil.move(tour.server.root / f"{board.board}.token", board.root / f"{board.board}.token")
        shutil.copyfile(tour.server.path("/etc/genfl/broker/ca.crt"), board.root / "ca.crt")
        for command in per_board:
            tour.run(section, command, board)
    state = tour.server.path("/var/lib/genfl-server")
    wait_for("the secured fleet's first round", (state / "checkpoints" / "round-0001.safetensors").exists, 900)
    status = tour.run(section, "genfl-edge status", tour.boards[0])
    # once the round is over, the board's status shows the round it took part in
    assert re.search(r"agent running: True", status.output) and re.search(r"last round: 1\b", status.output), (
        status.output
    )
    # Re-admission, on a revoked board: revoke it first, as the operating paragraph does
    board = tour.boards[0]
    tour.run(section, "genfl-server devices revoke press-07 --state-dir /var/lib/genfl-server", tour.server_for(board))
    readmitted = Machine(board.name + "-again", tour.work / "boards" / "readmitted", board.board)
    readmitted.root.mkdir(parents=True)
    for command in readmit:
        on_board = command.removeprefix("sudo ").startswith("genfl-edge")
        machine = readmitted if on_board else tour.server_for(board)
        if on_board:
            shutil.move(tour.server.root / f"{board.board}.token", readmitted.root / f"{board.board}.token")
            shutil.copyfile(tour.server.path("/etc/genfl/broker/ca.crt"), readmitted.root / "ca.crt")
        tour.run(section, command, machine)


def _log(machine: Machine, unit: str) -> str:
    try:
        return (machine.root / f"{unit}.log").read_text(errors="replace")
    except OSError:
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "deploy-walkthrough.json")
    parser.add_argument("--keep", action="store_true", help="keep the machines' folders (printed)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the walkthrough runs the document's sudo steps: run it as root", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix=".deploy-walkthrough-", dir=ROOT))  # not under /tmp: the units refuse it
    os.chmod(work, 0o755)
    started = time.monotonic()
    error = ""
    tour = Walkthrough(work, boards=5)
    try:
        walk(tour)
    except (RuntimeError, AssertionError, subprocess.SubprocessError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    report = {
        "document": str(DOC.relative_to(ROOT)),
        "ok": not error,
        "error": error[-4000:],
        "seconds": round(time.monotonic() - started, 1),
        "steps": [step.__dict__ for step in tour.steps],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'every step ran' if not error else 'FAILED: ' + error[:2000]} ({report['seconds']} s); {args.out}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not error else 1


if __name__ == "__main__":
    sys.exit(main())
