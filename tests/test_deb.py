"""The Debian package: built by scripts/build-deb, installed with no network
into a clean Debian root, upgraded and downgraded with the config and the
buffer kept and the ids going on in one stream, removed, purged.

Real parts throughout: dpkg-buildpackage and lintian on this machine; a
clean root made by mmdebstrap from the Debian archive holding what a gateway
has before the package (Debian's essential set, python3, systemd and the
packages the agent depends on); dpkg inside it behind `unshare --net`, so
the install has no network at all; the packaged agent and simulator running
in the root as the service user; a Mosquitto and an independent subscriber
on the host's loopback, which the root shares while the agent runs.

mmdebstrap, not debootstrap: both fetch the same packages from the Debian
archive, but debootstrap --variant=minbase took 29 s here before python3 was
even in, and mmdebstrap installs everything in one apt run (about 25 s).
The root is made while the packages build. RETROFIT_DEB_SUITE=trixie runs
the same test against trixie.

Root only: chroot, mount and dpkg in a root need it. A person without root
sees a skip; CI (root) never does, and a CI run without root fails.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.support import REPO, Broker, Subscriber, free_port, port_open, wait_until

BUILD_DEB = REPO / "scripts" / "build-deb"
SUITE = os.environ.get("RETROFIT_DEB_SUITE", "bookworm")
CONFIG = "/etc/retrofit-agent/config.yaml"
BUFFER = "var/lib/retrofit-agent/buffer.db"
# What a gateway runs besides the package's own dependencies: systemd (one of
# the package's alternatives for systemd-sysusers, and what runs the unit).
GATEWAY_BASE = ["python3", "systemd"]
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def require_root() -> None:
    if os.geteuid() != 0:
        message = "building a package and installing it into a chroot needs root (CI runs as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def require_tool(command: str, package: str) -> str:
    """As scripts/setup.sh does: root installs what is missing."""
    path = shutil.which(command)
    if path is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True,
                       timeout=300, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        path = shutil.which(command)
    assert path is not None, f"{command} missing after apt-get install {package}"
    return path


def project_version(tree: Path = REPO) -> str:
    return str(tomllib.loads((tree / "pyproject.toml").read_text())["project"]["version"])


def control_depends() -> list[str]:
    """The Python packages debian/control's Depends names (substvars aside)."""
    control = (REPO / "debian" / "control").read_text()
    field = re.search(r"^Depends:(.*(?:\n[ \t#].*)*)", control, re.MULTILINE)
    assert field, "no Depends in debian/control"
    return sorted(set(re.findall(r"\b(python3-[a-z0-9.-]+)", field.group(1))))


def build(tree: Path, out: Path, *options: str) -> Path:
    result = subprocess.run([str(tree / "scripts" / "build-deb"), "--out", str(out), *options],
                            capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, f"build-deb failed:\n{result.stderr[-4000:]}"
    deb = Path(result.stdout.strip().splitlines()[-1])
    assert deb.is_file(), result.stdout
    return deb


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


class Root:
    """A Debian root in a folder; commands run in it with chroot."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, *command: str, network: bool = True, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # A private mount namespace with /proc (systemd-tmpfiles, systemd-sysusers
        # need it); --net: a namespace with no interface up, i.e. no network.
        wrapper = ["unshare", "--mount", "--fork", *(["--net"] if not network else []), "sh", "-c",
                   'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"', str(self.path), *command]
        result = subprocess.run(wrapper, capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV,
                                stdin=subprocess.DEVNULL, check=False)
        if check:
            assert result.returncode == 0, (f"{' '.join(command)} -> {result.returncode}:\n"
                                            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def install(self, deb: Path, *dpkg_options: str) -> subprocess.CompletedProcess[str]:
        shutil.copy(deb, self.path / "tmp" / deb.name)
        return self.run("dpkg", *dpkg_options, "-i", f"/tmp/{deb.name}", network=False)

    def ids(self, user: str) -> str:
        """uid:gid of a user of the root, for chroot --userspec."""
        for line in (self.path / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return f"{fields[2]}:{fields[3]}"
        raise AssertionError(f"no user {user} in the root")

    def popen(self, *command: str, user: str | None = None, log: Path) -> subprocess.Popen[bytes]:
        """A long-running command: chroot execs it, so a signal reaches it directly."""
        spec = [f"--userspec={self.ids(user)}"] if user else []
        with log.open("ab") as out:
            return subprocess.Popen(["chroot", *spec, str(self.path), *command], stdout=out,
                                    stderr=subprocess.STDOUT, env=CLEAN_ENV, stdin=subprocess.DEVNULL)


def make_root(path: Path, log: Path) -> subprocess.Popen[bytes]:
    mmdebstrap = require_tool("mmdebstrap", "mmdebstrap")
    include = ",".join([*GATEWAY_BASE, *control_depends()])
    with log.open("wb") as out:
        return subprocess.Popen(
            [mmdebstrap, "--variant=essential", f"--include={include}",
             # Speed only: no fsync per file, no documentation or translations.
             "--dpkgopt=force-unsafe-io", "--dpkgopt=path-exclude=/usr/share/doc/*",
             "--dpkgopt=path-exclude=/usr/share/locale/*", SUITE, str(path)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def copy_with_version(destination: Path, version: str) -> Path:
    """The tree at another version, with a changed example config (which
    the upgrade must not put over the technician's)."""
    shutil.copytree(REPO, destination, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".demo", "build", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis"))
    pyproject = destination / "pyproject.toml"
    text = pyproject.read_text()
    current = f'version = "{project_version()}"'
    assert current in text
    pyproject.write_text(text.replace(current, f'version = "{version}"', 1))
    example = destination / "configs" / "example.yaml"
    example.write_text(example.read_text() + f"# (example of {version})\n")
    return destination


def file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes() if path.exists() else b"<absent>")
    return digest.hexdigest()


def packaged_unit(deb: Path, into: Path) -> str:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)
    units = list(into.glob("*/systemd/system/retrofit-agent.service")) + \
        list(into.glob("usr/lib/systemd/system/retrofit-agent.service"))
    assert len(units) == 1, units
    return units[0].read_text()


def run_agent_until(root: Root, subscriber: Subscriber, log: Path, more_than: int) -> None:
    """The packaged agent, as the service user, until the platform holds more
    than `more_than` distinct readings; then SIGTERM, which must exit 0."""
    agent = root.popen("retrofit-agent", "run", "--config", CONFIG, user="retrofit-agent", log=log)
    try:
        wait_until(lambda: len(subscriber.unique_readings()) > more_than + 2 or agent.poll() is not None,
                   60, f"readings beyond {more_than} at the platform")
        assert agent.poll() is None, f"the agent exited {agent.returncode}:\n{log.read_text()[-3000:]}"
    finally:
        if agent.poll() is None:
            agent.terminate()
        code = agent.wait(timeout=20)
    assert code == 0, f"the agent exited {code} after SIGTERM:\n{log.read_text()[-3000:]}"


# Longer on a fresh machine: build-deb apt-installs its tools, mmdebstrap downloads the root.
@pytest.mark.long(60)
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_package_installs_offline_upgrades_downgrades_and_purges(tmp_path: Path) -> None:
    require_root()
    root = Root(tmp_path / "root")
    root_log = tmp_path / "mmdebstrap.log"
    making_root = make_root(root.path, root_log)
    try:
        # --- build: this version with lintian, a later one from a copy --------------
        old_version = project_version()
        new_version = f"{old_version}.post1"
        old_deb = build(REPO, tmp_path / "old")
        assert old_deb.name == f"retrofit-agent_{old_version}_all.deb"
        # The second build takes the wheels the first one fetched: no network.
        new_tree = copy_with_version(tmp_path / "tree-new", new_version)
        new_deb = build(new_tree, tmp_path / "new", "--no-lintian", "--wheels", str(tmp_path / "old" / "wheels"))
        assert new_deb.name == f"retrofit-agent_{new_version}_all.deb"
    finally:
        root_made = making_root.wait(timeout=400)
    assert root_made == 0, f"mmdebstrap failed:\n{root_log.read_text()[-3000:]}"

    # --- what is in the package ------------------------------------------------------
    assert deb_field(old_deb, "Architecture") == "all"
    assert deb_field(old_deb, "Version") == old_version
    contents = subprocess.run(["dpkg-deb", "-c", str(old_deb)], capture_output=True, text=True,
                              check=True).stdout
    names = [line.split()[5] for line in contents.splitlines()]
    # Architecture: all is honest only while nothing compiled is inside.
    assert not [n for n in names if n.endswith((".so", ".pyc")) or ".so." in n]
    for expected in ("./usr/bin/retrofit-agent", "./usr/bin/retrofit-sim", "./etc/retrofit-agent/config.yaml",
                     "./usr/share/man/man1/retrofit-agent.1.gz", "./usr/share/man/man1/retrofit-sim.1.gz",
                     "./usr/lib/sysusers.d/retrofit-agent.conf", "./usr/lib/tmpfiles.d/retrofit-agent.conf",
                     "./usr/share/doc/retrofit-agent/copyright", "./usr/share/doc/retrofit-agent/operations.md.gz"):
        assert expected in names, f"{expected} is not in the package"
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(old_deb)], capture_output=True, check=True)
    assert b"./conffiles" in subprocess.run(["tar", "-t"], input=conffiles.stdout, capture_output=True,
                                            check=True).stdout
    # The unit keeps every hardening line of systemd/; only the command's path
    # and the documentation pointer differ.
    unit = packaged_unit(old_deb, tmp_path / "extracted")
    source = (REPO / "systemd" / "retrofit-agent.service").read_text()
    changed = sorted(set(unit.splitlines()) ^ set(source.splitlines()))
    assert all(line.startswith(("ExecStart=", "Documentation=", "# Installed by")) for line in changed), changed
    assert "ExecStart=/usr/bin/retrofit-agent run --config /etc/retrofit-agent/config.yaml" in unit

    # --- install with no network: only what the root already has --------------------
    installed = root.install(old_deb)
    assert "Setting up retrofit-agent" in installed.stdout
    assert root.run("retrofit-agent", "--version").stdout.strip() == f"retrofit-agent {old_version}"
    assert root.run("retrofit-sim", "--version").stdout.strip() == f"retrofit-sim {old_version}"
    # The user, the directories and the config's mode, as the service needs them.
    assert "dialout" in root.run("id", "-nG", "retrofit-agent").stdout.split()
    listing = root.run("stat", "-c", "%U:%G %a %n", CONFIG, "/var/lib/retrofit-agent").stdout
    assert f"root:retrofit-agent 640 {CONFIG}" in listing
    assert "retrofit-agent:retrofit-agent 750 /var/lib/retrofit-agent" in listing
    # Byte-compiled on install (the service's /usr is read-only, PYTHONDONTWRITEBYTECODE=1).
    assert list((root.path / "usr/lib/retrofit-agent/agent/__pycache__").glob("cli.*.pyc"))
    check = root.run("setpriv", "--reuid=retrofit-agent", "--regid=retrofit-agent", "--init-groups",
                     "retrofit-agent", "check", "--config", CONFIG)
    assert f"config {CONFIG}: valid" in check.stdout.lower()
    verify = root.run("systemd-analyze", "verify", "--man=no", "/lib/systemd/system/retrofit-agent.service",
                      check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # --- a short run against a simulator, as the technician's config says -----------
    broker = Broker(tmp_path / "broker").start()
    subscriber = Subscriber(broker.port).start()
    simulator_port = free_port()
    simulator = root.popen("retrofit-sim", "modbus", "--tcp", f"127.0.0.1:{simulator_port}",
                           "--device", "1=eastron-sdm630", log=tmp_path / "sim.log")
    try:
        wait_until(lambda: port_open(simulator_port) or simulator.poll() is not None, 30, "the simulator")
        assert simulator.poll() is None, (tmp_path / "sim.log").read_text()
        technicians = yaml.safe_dump({
            "gateway": {"id": "gw-deb", "site": "deb-site"},
            # Commits every second (a gateway's default is a minute): the test watches them arrive.
            "buffer": {"flush_interval": "1s"},
            "uplink": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": "buildings"}},
            "buses": [{"id": "plant-room", "type": "modbus-tcp", "host": "127.0.0.1", "port": simulator_port}],
            "devices": [{"id": "elec-main", "bus": "plant-room", "address": 1, "profile": "eastron-sdm630",
                         "interval": "1s"}],
        }, sort_keys=False)
        (root.path / CONFIG.lstrip("/")).write_text(technicians)
        buffer = root.path / BUFFER
        buffer_files = [buffer, buffer.with_name("buffer.db-wal")]

        run_agent_until(root, subscriber, tmp_path / "agent-old.log", more_than=0)
        first_run = len(subscriber.unique_readings())
        assert buffer.exists(), "the buffer is not where the package puts the state"

        # --- upgrade: the technician's config and the buffer stay ----------------------
        before = file_digest(*buffer_files)
        upgraded = root.install(new_deb, "--force-confold")
        assert root.run("retrofit-agent", "--version").stdout.strip() == f"retrofit-agent {new_version}"
        assert (root.path / CONFIG.lstrip("/")).read_text() == technicians, "the upgrade replaced the config"
        assert "(example of" in (root.path / f"{CONFIG.lstrip('/')}.dpkg-dist").read_text(), upgraded.stdout
        assert file_digest(*buffer_files) == before, "the upgrade touched the buffer"
        assert f"root:retrofit-agent 640 {CONFIG}" in root.run("stat", "-c", "%U:%G %a %n", CONFIG).stdout
        assert "WARNING" not in upgraded.stderr, upgraded.stderr
        run_agent_until(root, subscriber, tmp_path / "agent-new.log", more_than=first_run)
        second_run = len(subscriber.unique_readings())

        # --- downgrade: the same again, backwards ----------------------------------------
        before = file_digest(*buffer_files)
        root.install(old_deb, "--force-confold")
        assert root.run("retrofit-agent", "--version").stdout.strip() == f"retrofit-agent {old_version}"
        assert (root.path / CONFIG.lstrip("/")).read_text() == technicians, "the downgrade replaced the config"
        assert file_digest(*buffer_files) == before, "the downgrade touched the buffer"
        run_agent_until(root, subscriber, tmp_path / "agent-downgraded.log", more_than=second_run)

        # A config this version rejects: said during the install, which still succeeds.
        (root.path / CONFIG.lstrip("/")).write_text(technicians + "not_a_key: 1\n")
        reinstalled = root.install(old_deb, "--force-confold")
        assert "WARNING: this version does not accept" in reinstalled.stderr, reinstalled.stderr
        assert "not_a_key" in reinstalled.stderr
        (root.path / CONFIG.lstrip("/")).write_text(technicians)
    finally:
        simulator.terminate()
        simulator.wait(timeout=20)
        subscriber.stop()
        broker.stop()

    # One stream, ids 1..N without a gap or a repeat, across both changes of version.
    readings = subscriber.readings()
    streams = {batch["stream"] for batch in subscriber.payloads("/readings")}
    assert len(streams) == 1, streams
    ids = sorted(subscriber.unique_readings())
    assert ids == list(range(1, len(ids) + 1)), f"ids not contiguous: {ids[:5]} ... {ids[-5:]}"
    assert len(ids) > second_run > first_run > 0
    assert all(r["device"] == "elec-main" for r in readings)

    # --- remove keeps config and buffer; purge deletes them -----------------------------
    root.run("dpkg", "--remove", "retrofit-agent", network=False)
    assert not (root.path / "usr/bin/retrofit-agent").exists()
    assert (root.path / CONFIG.lstrip("/")).read_text() == technicians
    assert (root.path / BUFFER).exists()
    root.run("dpkg", "--purge", "retrofit-agent", network=False)
    assert not (root.path / "etc/retrofit-agent/config.yaml").exists()
    assert not (root.path / "var/lib/retrofit-agent").exists()
    assert root.run("dpkg-statoverride", "--list", CONFIG, check=False).returncode != 0
    shutil.rmtree(root.path)  # 200 MB; kept for a look when the test fails


# --- the pieces, without root ---------------------------------------------------------

def manpage(command: str, installed_at: str | None = "/usr/lib/retrofit-agent") -> str:
    arguments = [sys.executable, str(REPO / "scripts" / "manpage.py"), command, "--version", "9.9.9"]
    if installed_at:
        arguments += ["--installed-at", installed_at]
    result = subprocess.run(arguments, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_text(page: str, tmp_path: Path) -> str:
    """The page as `man` shows it, and with no complaint from groff."""
    source = tmp_path / "page.1"
    source.write_text(page)
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-rLL=200n", str(source)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return re.sub(r".\x08", "", result.stdout)  # overstrike (bold, underline) to plain text


@pytest.mark.parametrize(("command", "module"), [("retrofit-agent", "agent.cli"), ("retrofit-sim", "simulators.cli")])
def test_man_page_documents_every_command_and_option(command: str, module: str, tmp_path: Path) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (apt-get install groff-base)")
    import argparse

    text = as_text(manpage(command), tmp_path)
    assert f"{command} 9.9.9" in text
    parser = importlib.import_module(module).build_parser()
    seen = 0
    pending = [([command], parser)]
    while pending:
        words, current = pending.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += [([*words, name], sub) for name, sub in action.choices.items()]
            elif action.help != argparse.SUPPRESS:
                for option in action.option_strings:
                    assert option in text, f"{' '.join(words)} {option} is not in the man page"
                    seen += 1
        assert " ".join(words) in text, f"{' '.join(words)} is not in the man page"
    assert seen > 10
    assert "--version" in text and str(REPO) not in text


def test_man_page_gives_the_config_default_and_installed_paths(tmp_path: Path) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (apt-get install groff-base)")
    agent_page = as_text(manpage("retrofit-agent"), tmp_path)
    assert "retrofit-agent run\n" in agent_page
    run = agent_page.split("retrofit-agent run\n", 1)[-1].split("retrofit-agent check", 1)[0]
    assert "--config FILE" in run and "(default /etc/retrofit-agent/config.yaml)" in run, run
    # Defaults that point into the tree the page was made from are written as
    # where the package installs that tree.
    sim_page = as_text(manpage("retrofit-sim"), tmp_path)
    assert "/usr/lib/retrofit-agent/configs/sim-building.yaml" in sim_page
    assert str(REPO) not in sim_page

def build_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_deb", REPO / "scripts" / "build_deb.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_deb"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_dependency_is_bundled_within_its_range_or_taken_from_debian() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    helper = build_helper()
    helper.check_dependencies(REPO)
    declared = {canonicalize_name(Requirement(d).name): Requirement(d)
                for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    for pin in helper.bundled_pins(REPO):
        requirement = declared.get(canonicalize_name(pin.name))
        assert requirement is not None, f"{pin.name} is bundled but pyproject.toml does not need it"
        assert requirement.specifier.contains(pin.version, prereleases=True), \
            f"bundled {pin.name}=={pin.version} is outside pyproject.toml's {requirement}"
    assert set(helper.system_packages(REPO).values()) <= set(control_depends())


def test_a_dependency_the_packaging_does_not_provide_stops_the_build(tmp_path: Path) -> None:
    helper = build_helper()
    shutil.copytree(REPO / "debian", tmp_path / "debian", symlinks=True)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"PyYAML>=6.0",' in pyproject
    (tmp_path / "pyproject.toml").write_text(pyproject.replace('"PyYAML>=6.0",', '"PyYAML>=6.0", "left-pad>=1",'))
    with pytest.raises(helper.PackagingError, match=r"'left-pad>=1' in pyproject.toml is neither bundled"):
        helper.check_dependencies(tmp_path)
    # Through the script too, which says so before it installs or builds anything.
    (tmp_path / "scripts").mkdir()
    for script in ("build-deb", "build_deb.py"):
        shutil.copy2(REPO / "scripts" / script, tmp_path / "scripts" / script)
    result = subprocess.run([str(tmp_path / "scripts" / "build-deb"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "'left-pad>=1' in pyproject.toml is neither bundled" in result.stderr
    assert not list((tmp_path / "out").glob("*.deb"))


def test_a_wheel_without_the_pinned_hash_is_not_taken(tmp_path: Path) -> None:
    helper = build_helper()
    pin = helper.bundled_pins(REPO)[0]
    impostor = tmp_path / f"{pin.wheel_prefix()}py3-none-any.whl"
    impostor.write_bytes(b"not the wheel that was pinned")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{pin.name}=={pin.version}")):
        helper.pinned_wheels(REPO, tmp_path)


@pytest.mark.parametrize(("pep440", "debian"), [
    ("0.1.0", "0.1.0"),
    ("1.2rc1", "1.2~rc1"),
    ("1.2.dev3", "1.2~~dev3"),
    ("1.2a1.dev3", "1.2~a1~dev3"),
    ("1.2.post1", "1.2.post1"),
    ("1.2+site.3", "1.2+site.3"),
])
def test_python_versions_become_debian_versions_that_sort_the_same(pep440: str, debian: str) -> None:
    assert build_helper().debian_version(pep440) == debian


def test_debian_orders_the_mapped_versions_as_python_does() -> None:
    from packaging.version import Version

    helper = build_helper()
    ordered = ["1.0.dev1", "1.0a1.dev1", "1.0a1", "1.0b2", "1.0rc1", "1.0", "1.0.post1.dev1", "1.0.post1",
               "1.0.post1+site", "1.1"]
    assert sorted(ordered, key=Version) == ordered
    for lower, higher in itertools.pairwise(ordered):
        result = subprocess.run(["dpkg", "--compare-versions", helper.debian_version(lower), "lt",
                                 helper.debian_version(higher)], timeout=10, check=False)
        assert result.returncode == 0, (f"{lower} -> {helper.debian_version(lower)} does not sort "
                                        f"before {higher} -> {helper.debian_version(higher)}")


def test_build_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    result = subprocess.run([shellcheck, str(BUILD_DEB)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
