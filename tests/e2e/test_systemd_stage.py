"""The systemd stage (issue 22, point 1): relctl installed on a booted Debian 12 by the README's
"Installing on a host (systemd)" steps, run from the README's own code blocks (with the
README's `myapp` as the suite's `counter` release), then checked the way an operator meets it:
ready and status, the socket's group, upgrade and downgrade as a member of it (the agent
unpacking on the README's layout), reload and cookie rotation, restarts idle and mid-upgrade,
the watchdog, a config mistake, the node's own unit, a reboot, and the sandbox's score.

The tests run in file order on one container (tests/tools/nspawn.py); each leaves the
system as the next expects it. They need root and systemd-nspawn: elsewhere they skip with the
reason, under CI they fail. .ci/systemd-stage runs them (and times them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.tools.needs import unavailable
from tests.tools.nspawn import HOSTNAME, BootFailed, Container, boot_problem, build_root
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

ROOT = Path(__file__).resolve().parents[2]
NODE = f"counter@{HOSTNAME}"
COOKIE = "stagecookie0123456789"
SRC = "/root/relctl-src"          # the checkout, copied into the container
TARBALL = "/srv/counter-{}.tar.gz"
_T = TypeVar("_T")


# --- the README, as code ----------------------------------------------------------------------

def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of each code block of the README's systemd section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## Installing on a host (systemd)")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```(\w+)\n(.*?)```", text[start:end], re.S)


def as_counter(text: str) -> str:
    """The README's names replaced "throughout", as it asks."""
    return text.replace("myapp@host", NODE).replace("myapp", "counter")


def install_steps() -> tuple[list[str], str, str, str]:
    """The build machine's commands, the host's steps 1 to 4, agent.toml, steps 5 and 6."""
    blocks = readme_blocks()
    sh = [b for lang, b in blocks if lang == "sh"]
    toml = next(b for lang, b in blocks if lang == "toml")
    first = as_counter(sh[0]).splitlines()
    build = [line for line in first if "pip wheel" in line]
    host = "\n".join(line for line in first if "pip wheel" not in line)
    assert build, "the README's step 1 no longer builds the wheels with pip wheel"
    return build, host, as_counter(toml), as_counter(sh[1])


def rotation_block() -> str:
    return as_counter(next(b for lang, b in readme_blocks()
                           if lang == "sh" and "NEW_COOKIE_FILE" in b))


# --- helpers ------------------------------------------------------------------------------------

def eventually(check: Callable[[], _T], timeout: float, what: str,
               interval: float = 0.2) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last: {value!r})")
        time.sleep(interval)


def relctl_json(c: Container, args: str, user: str = "alice") -> Any:
    proc = c.run(f"relctl {args} -o json", user=user)
    return json.loads(proc.stdout)


def node_releases(c: Container) -> list[tuple[str, str]]:
    nodes = relctl_json(c, "versions")["nodes"]
    return [(r["version"], r["status"]) for r in nodes[0]["releases"]]


def node_up(c: Container) -> bool:
    proc = c.run("relctl nodes -o json", check=False)
    return proc.returncode == 0 and all(n["up"] for n in json.loads(proc.stdout)["nodes"])


def agent_log(c: Container, since: str = "") -> str:
    return c.run(f"journalctl -u relctl-agent --no-pager -o cat {since}").stdout


def step(op: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in op["steps"] if s["name"] == name)


def copy_checkout(dest: Path) -> None:
    """The checkout's tracked files (as they are in the work tree) under ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def given_node(c: Container, build: ReleaseBuild) -> None:
    """What the README takes as given: the release installed in /opt/counter, its node running
    as user counter under its own unit (the example unit, adapted as its comment says)."""
    shutil.copytree(build.target_template, c.path("/opt/counter"), symlinks=True)
    for vsn in ("0.0.1", "0.0.2"):
        shutil.copy2(build.tarball(vsn), c.path(TARBALL.format(vsn)))
    unit = as_counter((ROOT / "systemd/examples/myapp.service").read_text())
    unit = re.sub(r"(?m)^ExecStart=.*$", f"ExecStart=/opt/counter/bin/counter -sname {NODE}", unit)
    c.path("/etc/systemd/system/counter.service").write_text(unit)
    c.run(f"""set -e
useradd --system --user-group --home-dir /var/lib/counter --create-home \\
        --shell /usr/sbin/nologin counter
useradd --create-home alice
useradd --create-home bob
chmod 0644 /srv/*.tar.gz
erl -noshell -eval 'ok = release_handler:create_RELEASES("/opt/counter",
    "/opt/counter/releases", "/opt/counter/releases/0.0.1/counter-0.0.1.rel", []),
    halt().'
printf %s {COOKIE} > /var/lib/counter/.erlang.cookie
printf %s {COOKIE} > /opt/counter/releases/COOKIE
chown -R counter:counter /opt/counter /var/lib/counter
chmod 0400 /var/lib/counter/.erlang.cookie /opt/counter/releases/COOKIE
systemctl daemon-reload
systemctl enable --now counter
""")


# --- the container ------------------------------------------------------------------------------

def _unavailable(reason: str) -> None:
    unavailable(f"the systemd stage cannot run: {reason}")


@pytest.fixture(scope="module")
def box(release_build: ReleaseBuild, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Container]:
    problem = boot_problem()
    if problem is not None:
        _unavailable(problem)
    try:
        root = build_root()
    except BootFailed as exc:
        _unavailable(str(exc))
    # Beside the root (not in /tmp: the test's tmp dir may be a tmpfs that overlay refuses).
    workdir = Path(f"{root}.run-{os.getpid()}")
    c = Container(root, workdir)
    try:
        try:
            seconds = c.boot()
        except (BootFailed, subprocess.CalledProcessError) as exc:
            _unavailable(f"systemd-nspawn cannot boot the Debian 12 root: {exc}")
        print(f"container booted in {seconds:.1f} s")
        given_node(c, release_build)
        build, host, toml, finish = install_steps()
        copy_checkout(c.path(SRC))
        # The operator adapts the example drop-in ($EDITOR in step 5): names replaced.
        example = c.path(f"{SRC}/systemd/relctl-agent.service.d/myapp.conf")
        example.with_name("counter.conf").write_text(as_counter(example.read_text()))
        wheels = Path(f"{root}.wheels")
        for line in build:  # on "a build machine": this host, from the copy of the checkout
            subprocess.run(line, shell=True, cwd=c.path(SRC), check=True, timeout=600,
                           capture_output=True,
                           env={**os.environ, "PIP_NO_INDEX": "1",
                                "PIP_FIND_LINKS": str(wheels),
                                "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        c.run("set -ex\n" + host, cwd=SRC, timeout=300)
        c.path("/etc/relctl/agent.toml").write_text(toml)
        c.run("chgrp relctl /etc/relctl/agent.toml && chmod 0640 /etc/relctl/agent.toml")
        done = c.run("set -ex\n" + finish, cwd=SRC, timeout=120, env={"EDITOR": "true"})
        print(done.stdout, done.stderr)
        yield c
    finally:
        if c.leader:
            print(agent_log(c))
        c.close()


# --- the checks, in order -----------------------------------------------------------------------

def test_ready_with_its_status_and_the_config_check(box: Container) -> None:
    assert box.unit("relctl-agent", "ActiveState") == "active"
    assert box.unit("relctl-agent", "StatusText") == "1 node: 1 up"
    assert box.unit("relctl-agent", "NRestarts") == "0"
    # Step 1 put relctl-agent on PATH; the production config checks as root, outside the unit.
    check = box.run("relctl-agent --check-config /etc/relctl/agent.toml")
    assert check.stdout.startswith("/etc/relctl/agent.toml: ok;"), check.stdout
    assert NODE in check.stdout
    # Ready means the node was tried: it is up at once (the drop-in orders the agent after it).
    assert node_releases(box) == [("0.0.1", "permanent")]


def test_the_socket_group_decides_who_may_call(box: Container) -> None:
    assert box.run("relctl versions", user="alice").returncode == 0
    refused = box.run("relctl versions", user="bob", check=False)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "Permission denied" in refused.stderr, refused.stderr


def test_upgrade_and_downgrade_as_a_group_member_with_the_agents_own_unpack(
        box: Container) -> None:
    up = box.run(f"relctl upgrade 0.0.2 --tarball {TARBALL.format('0.0.2')} -o json",
                 user="alice", check=False, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    op = json.loads(up.stdout)["operation"]
    # Point 5: production upgrades take the agent's path, not unpack_release in the node.
    assert step(op, "stage")["detail"].startswith(
        "extracted by the agent into /opt/counter/.relctl-unpack-"), step(op, "stage")
    modes = box.run("stat -c '%U %G %a' /opt/counter/lib/counter-0.0.2 "
                    "/opt/counter/lib/counter-0.0.2/ebin/counter.beam").stdout.split("\n")
    # The dir: the node's group, setgid, group-writable (the unit's UMask=0007).
    assert modes[0].split()[1] == "counter" and int(modes[0].split()[2], 8) & 0o2070 == 0o2070, \
        modes
    assert modes[1].split()[1] == "counter" and int(modes[1].split()[2], 8) & 0o020, modes
    assert ("0.0.2", "permanent") in node_releases(box)

    down = box.run("relctl downgrade 0.0.1", user="alice", check=False, timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert ("0.0.1", "permanent") in node_releases(box)
    # The node's user removes what the agent unpacked (release_handler, in the node).
    removed = box.run("relctl remove 0.0.2", user="alice", check=False, timeout=120)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not box.path("/opt/counter/lib/counter-0.0.2").exists()


def test_reload_and_cookie_rotation_as_the_readme_says(box: Container) -> None:
    box.run("systemctl reload relctl-agent")
    eventually(lambda: "SIGHUP: re-read the cookie files of 1 node(s); changed: none"
               in agent_log(box), 10, "the reload is logged")
    # The node restarts with a new cookie: the agent loses it and says what to do.
    new = "rotated" + COOKIE
    box.run(f"printf %s {new} > /root/new.cookie && install -m 0400 -o counter "
            "/root/new.cookie /var/lib/counter/.erlang.cookie && systemctl restart counter")
    def down_reason() -> str:
        proc = box.run("relctl nodes -o json", check=False)
        return str(json.loads(proc.stdout)["nodes"][0].get("error", "")) if proc.stdout else ""
    reason = eventually(lambda: "rejected" in (r := down_reason()) and r, 30,
                        "the node rejects the old cookie")
    print(f"the node down: {reason}")
    assert "re-reads /etc/relctl/cookies/counter.cookie" in reason, reason
    # The README's rotation, literally: the node is reached again at once.
    box.run("set -ex\n" + rotation_block().replace("NEW_COOKIE_FILE", "/root/new.cookie"))
    eventually(lambda: node_up(box), 15, "the agent reaches the node with the new cookie")
    assert f"changed: {NODE}" in agent_log(box)


def test_a_cookie_credential_is_checked_outside_the_unit_and_needs_a_restart(
        box: Container) -> None:
    """The other way to give the cookie (README): a systemd credential, which systemd 252
    copies at start only; --check-config names it, a reload says to restart."""
    box.run("""set -e
cp /etc/relctl/agent.toml /root/agent.toml.file
install -d -m 0700 /etc/relctl/credentials
cp /etc/relctl/cookies/counter.cookie /etc/relctl/credentials/counter.cookie
sed -i 's|^cookie_file = .*|cookie_credential = "counter-cookie"|' /etc/relctl/agent.toml
printf '[Service]\\nLoadCredential=counter-cookie:/etc/relctl/credentials/counter.cookie\\n' \
    > /etc/systemd/system/relctl-agent.service.d/credential.conf
systemctl daemon-reload""")
    check = box.run("relctl-agent --check-config /etc/relctl/agent.toml")
    assert ("warning: /etc/relctl/agent.toml: nodes[0].cookie_credential: credential "
            "'counter-cookie' is given by the unit at start "
            "(LoadCredential=counter-cookie:FILE); not checked here") in check.stderr, check
    box.run("systemctl restart relctl-agent")
    assert box.unit("relctl-agent", "StatusText") == "1 node: 1 up"
    box.run("systemctl reload relctl-agent")
    eventually(lambda: "copied when the agent started: restart the agent (systemctl restart "
                       "relctl-agent) to pick up a new credential" in agent_log(box), 10,
               "the reload says a credential needs a restart")
    box.run("cp /root/agent.toml.file /etc/relctl/agent.toml && rm "
            "/etc/systemd/system/relctl-agent.service.d/credential.conf && "
            "systemctl daemon-reload && systemctl restart relctl-agent")


def test_restart_idle_after_a_checked_config_change(box: Container) -> None:
    # A health probe with a soak: an upgrade that lasts, for the next test.
    box.run("printf '%s\\n' 'health_probes = [\"counter:health\"]' 'health_soak = 6' "
            ">> /etc/relctl/agent.toml && relctl-agent --check-config /etc/relctl/agent.toml")
    box.run("systemctl restart relctl-agent")
    assert box.unit("relctl-agent", "ActiveState") == "active"
    assert box.unit("relctl-agent", "StatusText") == "1 node: 1 up"


def test_restart_mid_upgrade_loses_nothing(box: Container) -> None:
    client = box.popen(f"relctl upgrade 0.0.2 --tarball {TARBALL.format('0.0.2')}",
                       user="alice")
    try:
        def in_verify() -> bool:
            ops = relctl_json(box, "operations")["operations"]
            running = [o for o in ops if o["outcome"] == "running"]
            return bool(running) and any(s["name"] == "verify" for s in running[0]["steps"])
        eventually(in_verify, 60, "the upgrade is in its verify soak")
        box.run("systemctl restart relctl-agent", timeout=180)
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 0, out + err
    assert "upgrade 0.0.2 on " + NODE + ": done" in out, out
    log = agent_log(box)
    assert "Bad file descriptor" not in log and "cannot write the audit trail" not in log
    trail = relctl_json(box, "audit")["records"]
    upgrade = next(r for r in trail if r["rpc"] == "Upgrade")
    assert upgrade["result"] == "ok" and upgrade["detail"].endswith(": succeeded"), upgrade
    assert ("0.0.2", "permanent") in node_releases(box)


def test_the_node_unit_restart_boots_the_permanent_release(box: Container) -> None:
    box.run("systemctl restart counter")
    eventually(lambda: node_up(box) and ("0.0.2", "permanent") in node_releases(box),
               30, "the node is back on 0.0.2")


def test_the_watchdog_restarts_a_hung_agent(box: Container) -> None:
    # The unit's 30 s, shortened by a drop-in so that the stage stays short.
    box.run("mkdir -p /run/systemd/system/relctl-agent.service.d && printf "
            "'[Service]\\nWatchdogSec=4s\\n' > /run/systemd/system/relctl-agent.service.d/"
            "wd.conf && systemctl daemon-reload && systemctl restart relctl-agent")
    pid = box.unit("relctl-agent", "MainPID")
    restarts = int(box.unit("relctl-agent", "NRestarts"))
    box.run(f"kill -STOP {pid}")
    eventually(lambda: (box.unit("relctl-agent", "MainPID") not in (pid, "0")
                        and box.unit("relctl-agent", "ActiveState") == "active"),
               40, "systemd restarted the agent", interval=0.5)
    assert int(box.unit("relctl-agent", "NRestarts")) == restarts + 1
    assert "Watchdog timeout" in box.run("journalctl -u relctl-agent --no-pager").stdout
    box.run("rm /run/systemd/system/relctl-agent.service.d/wd.conf && systemctl daemon-reload "
            "&& systemctl restart relctl-agent")


def test_a_config_mistake_stops_with_78_and_no_restart_loop(box: Container) -> None:
    box.run("cp /etc/relctl/agent.toml /root/agent.toml.good && "
            "printf '[agent]\\nno_such_key = 1\\n' >> /etc/relctl/agent.toml")
    assert box.run("relctl-agent --check-config", check=False).returncode == 78
    assert box.run("systemctl restart relctl-agent", check=False).returncode != 0
    assert box.unit("relctl-agent", "ExecMainStatus") == "78"
    time.sleep(7)  # past RestartSec=5s: no restart came
    assert box.unit("relctl-agent", "ActiveState") == "failed"
    assert box.unit("relctl-agent", "NRestarts") == "0"
    box.run("cp /root/agent.toml.good /etc/relctl/agent.toml && systemctl restart relctl-agent")


def test_the_sandbox_scores_at_most_2(box: Container) -> None:
    out = box.run("systemd-analyze security relctl-agent --no-pager").stdout
    score = float(re.search(r"Overall exposure level for relctl-agent\.service: ([0-9.]+)",
                            out).group(1))  # type: ignore[union-attr]
    print(f"systemd-analyze security: {score}")
    assert score <= 2.0, out
    status = box.run("cat /proc/$(systemctl show -p MainPID --value relctl-agent)/status").stdout
    assert re.search(r"NoNewPrivs:\s+1", status) and re.search(r"Seccomp:\s+2", status), status
    assert re.search(r"CapEff:\s+0+\n", status), status


def test_a_reboot_brings_everything_back(box: Container) -> None:
    seconds = box.reboot()
    print(f"rebooted in {seconds:.1f} s")
    eventually(lambda: box.unit("relctl-agent", "ActiveState") == "active", 30,
               "the agent is started at boot")
    eventually(lambda: node_up(box), 30, "the node is up after the reboot")
    assert box.unit("relctl-agent", "StatusText") == "1 node: 1 up"
    assert ("0.0.2", "permanent") in node_releases(box)
