"""Helpers for the system tests: cached Debian 12 and 13 images, containers
booted with a real systemd (systemd-nspawn), network namespaces joined by veth
pairs.

Each image is a debootstrap root cached under $TINYMQ_TEST_CACHE (default
/var/cache/tinymq-test), keyed by its recipe (suite, mirror, packages). The
mirror is $TINYMQ_TEST_MIRROR, else the first Debian archive in the host's own
apt sources, else deb.debian.org. Containers boot an image with
--volatile=overlay, so every container starts from the pristine image and
leaves nothing behind. Each container lives in its own network namespace with
an address in 10.200.0.0/24; commands run inside through nsenter.

Run `python3 tests/system/systest.py image` to build the images alone,
`python3 tests/system/systest.py mirror` to see which mirror is used, or
`python3 tests/system/systest.py sweep` to clean up after a killed run.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TINYMQ_TEST_CACHE", "/var/cache/tinymq-test"))
RUNS = CACHE / "runs"
LOGS = Path(os.environ.get("TINYMQ_TEST_LOGS", REPO / ".cache" / "systest-logs"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = Path(os.environ.get("TINYMQ_TEST_APT_SOURCES", "/etc/apt"))

# The releases the package supports: Debian 12 (oldstable) and 13 (stable).
BOOKWORM, TRIXIE = "bookworm", "trixie"
SUITES = (BOOKWORM, TRIXIE)

# Everything the containers need, including tinymq's dependencies, so that
# `apt install ./tinymq.deb` works inside a container without network.
# debootstrap does not resolve virtual packages: python3-cffi-backend provides the
# python3-cffi-backend-api-min/-max that python3-cryptography depends on.
IMAGE_PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "python3", "sqlite3", "iproute2",
    "adduser", "python3-yaml", "python3-systemd", "python3-sdnotify",
    "python3-cryptography", "python3-cffi-backend", "procps",
]
IMAGE_RECIPE = 2  # bump when the preparation below changes
# debian-archive-keyring on Debian 12 (2023.3+deb12u1 and later) knows trixie's keys.
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

SUBNET = "10.200.0"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CommandFailed(AssertionError):
    pass


def host(cmd, check=True, timeout=120, **kw):
    """Run a command on the host; raise with its output if it fails."""
    if isinstance(cmd, str):
        cmd = ["sh", "-c", cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise CommandFailed(
            f"host command failed ({p.returncode}): {shlex.join(cmd)}\n"
            f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def wait_for(what, predicate, timeout=30.0, interval=0.1):
    """Poll predicate() until it returns a truthy value; fail after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
        except CommandFailed as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def holds_for(what, predicate, duration, interval=0.2):
    """Check predicate() every interval for the whole duration; fail at the first
    falsy value ("nothing happens" is watched for its whole span, not looked at once)."""
    deadline = time.monotonic() + duration
    while True:
        value = predicate()
        if not value:
            raise AssertionError(f"{what} stopped holding after "
                                 f"{duration - (deadline - time.monotonic()):.1f}s; got {value!r}")
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------- the mirror

# Suite names of Debian's main archive (not -security, -updates, -backports).
DEBIAN_SUITES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                 "oldoldstable", "oldstable", "stable", "testing", "unstable"}


def _one_line_sources(path):
    """(types, uris, suites, components) of each entry of a one-line .list file."""
    for line in path.read_text(errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)  # [options]
        words = line.split()
        if len(words) >= 4:
            yield [words[0]], [words[1]], [words[2]], words[3:]


def _deb822_sources(path):
    """(types, uris, suites, components) of each enabled stanza of a .sources file."""
    for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        yield (fields.get("types", "").split(), fields.get("uris", "").split(),
               fields.get("suites", "").split(), fields.get("components", "").split())


def host_mirror():
    """(mirror, where it came from) for debootstrap: $TINYMQ_TEST_MIRROR, else the first
    Debian main archive in the host's apt sources (a `deb` entry for a Debian release, not
    -security or -updates, with component main; files in the order apt reads them), else
    deb.debian.org. $TINYMQ_TEST_APT_SOURCES reads another directory than /etc/apt."""
    if os.environ.get("TINYMQ_TEST_MIRROR"):
        return os.environ["TINYMQ_TEST_MIRROR"].rstrip("/"), "set by $TINYMQ_TEST_MIRROR"
    files = [APT_SOURCES / "sources.list"]
    parts = APT_SOURCES / "sources.list.d"
    if parts.is_dir():
        files += sorted(f for f in parts.iterdir() if f.suffix in (".list", ".sources"))
    for f in files:
        try:
            entries = list(_deb822_sources(f) if f.suffix == ".sources" else _one_line_sources(f))
        except OSError:
            continue
        for types, uris, suites, components in entries:
            if "deb" not in types or "main" not in components:
                continue
            if not DEBIAN_SUITES.intersection(suites):
                continue
            for uri in uris:
                if re.match(r"(https?|file):/", uri):
                    return uri.rstrip("/"), f"taken from {f}"
    return DEFAULT_MIRROR, (f"the default: no `deb ... main` entry for a Debian release in "
                            f"{APT_SOURCES}/sources.list or sources.list.d/")


MIRROR, MIRROR_FROM = host_mirror()


# --------------------------------------------------------------- the images

def image_key(suite):
    h = hashlib.sha256(json.dumps([suite, MIRROR, IMAGE_PACKAGES, IMAGE_RECIPE]).encode())
    return h.hexdigest()[:12]


def image_dir(suite):
    return CACHE / f"rootfs-{suite}-{image_key(suite)}"


def run_parallel(fns):
    """Call every fn in its own thread; raise the first error once all are done."""
    errors = []

    def call(fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
    threads = [threading.Thread(target=call, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def ensure_images(log=print):
    """{suite: root} for every supported suite; missing images are built side by side."""
    roots = {}

    def build(suite):
        roots[suite] = ensure_image(suite, log)
    run_parallel([lambda s=s: build(s) for s in SUITES])
    return roots


def ensure_image(suite, log=print):
    """Return the cached image's root for a suite, building it first if needed (~1 min)."""
    root = image_dir(suite)
    if (root / ".tinymq-image-ready").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"image-{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".tinymq-image-ready").exists():
            return root
        # This suite's stale recipes and broken attempts, and images named the old way.
        legacy = [d for d in CACHE.glob("rootfs-*") if re.fullmatch(r"rootfs-[0-9a-f]{12}", d.name)]
        for old in [*CACHE.glob(f"rootfs-{suite}-*"), *CACHE.glob(f"building-{suite}-*"), *legacy]:
            shutil.rmtree(old, ignore_errors=True)
        tmp = CACHE / f"building-{suite}-{os.getpid()}"
        log(f"building the {suite} system-test image in {root} from {MIRROR} "
            f"({MIRROR_FROM}); about a minute")
        t0 = time.monotonic()
        try:
            host(["debootstrap", "--variant=minbase", "--include=" + ",".join(IMAGE_PACKAGES),
                  f"--keyring={KEYRING}", suite, str(tmp), MIRROR], timeout=900)
        except CommandFailed as e:
            log_file = tmp / "debootstrap/debootstrap.log"
            tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
            shutil.rmtree(tmp, ignore_errors=True)
            if re.search(r"unknown key|NO_PUBKEY|invalid (Release )?signature", f"{e}{tail}", re.I):
                tail += (f"\n(A Release file signed by a key not in {KEYRING}: Debian 12's "
                         "debian-archive-keyring 2023.3+deb12u1 or later knows trixie's keys; "
                         "apt-get install debian-archive-keyring.)")
            raise CommandFailed(
                f"could not build the {suite} image with debootstrap from {MIRROR} "
                f"({MIRROR_FROM}); set TINYMQ_TEST_MIRROR to another Debian mirror if this one "
                f"does not serve {suite}.\n{e}\n{log_file}:\n{tail}") from None
        # Every container must get its own identity and a clean journal.
        (tmp / "etc/hostname").unlink(missing_ok=True)
        (tmp / "etc/machine-id").write_text("")
        dbus_id = tmp / "var/lib/dbus/machine-id"
        dbus_id.unlink(missing_ok=True)
        dbus_id.parent.mkdir(parents=True, exist_ok=True)
        dbus_id.symlink_to("/etc/machine-id")
        for d in ("var/log/journal", "var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (tmp / d).glob("*"):
                if entry.is_file() or entry.is_symlink():
                    entry.unlink()
                elif entry.is_dir() and entry.name not in ("partial", "auxfiles"):
                    shutil.rmtree(entry)
        (tmp / ".tinymq-image-ready").write_text(f"{suite} {image_key(suite)} {MIRROR}\n")
        tmp.rename(root)
        log(f"{suite} image built in {time.monotonic() - t0:.0f}s")
    return root


# ----------------------------------------------------- bookkeeping and sweep

def _record(kind, value):
    """Remember a resource of this run so that a later run can clean it up
    if this one is killed before its own cleanup."""
    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / f"{os.getpid()}.jsonl", "a") as f:
        f.write(json.dumps({"kind": kind, "value": value}) + "\n")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def forget_run():
    (RUNS / f"{os.getpid()}.jsonl").unlink(missing_ok=True)


def sweep():
    """Clean up what killed runs left behind: their containers and netns."""
    if not RUNS.exists():
        return
    for state in RUNS.glob("*.jsonl"):
        if state.stem.isdigit() and _pid_alive(int(state.stem)) and int(state.stem) != os.getpid():
            continue  # a run in progress
        entries = [json.loads(line) for line in state.read_text().splitlines() if line.strip()]
        for e in entries:
            if e["kind"] == "nspawn":
                pid, name = e["value"]
                argv = _cmdline(pid)
                if argv and b"systemd-nspawn" in argv[0] and f"--machine={name}".encode() in argv:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
        for e in entries:
            if e["kind"] == "netns":
                host(["ip", "netns", "delete", e["value"]], check=False)
        state.unlink(missing_ok=True)


# ------------------------------------------------------------------ network

class Network:
    """Network namespaces on one /24, joined pairwise by veth links."""

    def __init__(self, tag, count):
        self.tag = tag
        self.names = [f"tmq{tag}{i}" for i in range(count)]
        self.addrs = [f"{SUBNET}.{i + 1}" for i in range(count)]

    def create(self):
        for ns in self.names:
            _record("netns", ns)
            host(["ip", "netns", "add", ns])
            host(["ip", "-n", ns, "link", "set", "lo", "up"])
        # A star would need a bridge; two or three hosts are enough here, so
        # one veth link per pair with host routes.
        for i in range(len(self.names)):
            for j in range(i + 1, len(self.names)):
                a, b = self.names[i], self.names[j]
                va, vb = f"v{self.tag}{i}{j}", f"v{self.tag}{j}{i}"
                host(["ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b])
                for ns, dev, me, other in ((a, va, i, j), (b, vb, j, i)):
                    host(["ip", "-n", ns, "addr", "add", f"{self.addrs[me]}/32", "dev", dev])
                    host(["ip", "-n", ns, "link", "set", dev, "up"])
                    host(["ip", "-n", ns, "route", "add", f"{self.addrs[other]}/32", "dev", dev])
        return self

    def destroy(self):
        for ns in self.names:
            host(["ip", "netns", "delete", ns], check=False)


# Runs with the host's Debian python3 inside a network namespace (ip netns exec):
# collects the UDP payloads to or from a port on every interface there, outgoing
# and incoming, until its stdin is closed; prints them as a JSON list of hex strings.
_SNIFF = r"""
import json, select, socket, struct, sys, time
port, out = int(sys.argv[1]), []
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
print("ready", flush=True)
deadline = time.monotonic() + 600
while len(out) < 20000 and time.monotonic() < deadline:
    ready, _, _ = select.select([s, sys.stdin], [], [], 1.0)
    if sys.stdin in ready:
        break
    if s not in ready:
        continue
    frame = s.recv(65536)
    kind = struct.unpack("!H", frame[12:14])[0]
    if kind == 0x0800 and frame[23] == 17:
        l4 = 14 + (frame[14] & 15) * 4
    elif kind == 0x86DD and frame[20] == 17:
        l4 = 54
    else:
        continue
    if port in struct.unpack("!HH", frame[l4:l4 + 4]):
        out.append(frame[l4 + 8:].hex())
print(json.dumps(out), flush=True)
"""


class Sniffer:
    """What really crosses the wire: UDP payloads to or from `port` in a network
    namespace, captured from the host with an AF_PACKET socket while the block runs.

        with Sniffer(netns) as wire:
            ...
        wire.payloads  # [bytes]
    """

    def __init__(self, netns, port=9000):
        self.netns, self.port, self.payloads, self.proc = netns, port, None, None

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", _SNIFF, str(self.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise CommandFailed(f"the packet capture in {self.netns} did not start: "
                                f"{line} {self.proc.stderr.read()}")
        return self

    def __exit__(self, *exc):
        try:
            out, err = self.proc.communicate(input="", timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        if self.proc.returncode != 0 and exc[0] is None:
            raise CommandFailed(f"the packet capture in {self.netns} failed: {err}")
        self.payloads = [bytes.fromhex(p) for p in json.loads(out or "[]")]
        return False


# --------------------------------------------------------------- containers

class Container:
    """A Debian root booted with systemd in its own network namespace."""

    def __init__(self, root, name, hostname, netns, address, hosts, binds=()):
        self.root = Path(root)
        self.name = name
        self.hostname = hostname
        self.netns = netns
        self.address = address
        self.hosts = hosts
        self.binds = list(binds)
        self.proc = None
        self.leader = None
        LOGS.mkdir(parents=True, exist_ok=True)
        self.console_log = LOGS / f"{hostname}.console.log"

    # -- life cycle

    def start(self):
        argv = ["systemd-nspawn", "-D", str(self.root), f"--machine={self.name}",
                f"--hostname={self.hostname}", "--boot", "--volatile=overlay",
                "--register=no", "--keep-unit", "--console=pipe",
                f"--network-namespace-path=/run/netns/{self.netns}"]
        argv += [f"--bind-ro={src}:{dst}" for src, dst in self.binds]
        log = open(self.console_log, "w")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        _record("nspawn", [self.proc.pid, self.name])
        return self

    def _find_leader(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn for {self.hostname} exited {self.proc.returncode}; "
                                 f"see {self.console_log}:\n{self.console_log.read_text()[-2000:]}")
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        for kid in kids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                    return int(kid)
        return None

    def wait_booted(self, timeout=90):
        self.leader = wait_for(f"{self.hostname}'s systemd", self._find_leader, timeout)
        # is-system-running --wait blocks until start-up has finished.
        def booted():
            p = self.run("systemctl is-system-running --wait", check=False, timeout=timeout)
            return p.stdout.strip() in ("running", "degraded") and p.stdout.strip()
        state = wait_for(f"{self.hostname} to finish booting", booted, timeout)
        hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n" + "".join(
            f"{a} {n}\n" for n, a in self.hosts.items())
        self.run("cat > /etc/hosts", input=hosts)
        return state

    def stop(self, timeout=15):
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.leader:
            with contextlib.suppress(Exception):
                self.save_journal()
            with contextlib.suppress(Exception):
                self.run("systemctl poweroff --no-block", check=False, timeout=10)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in (self.leader, self.proc.pid):
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def save_journal(self):
        p = self.run("journalctl --no-pager -o short-precise", check=False, timeout=30)
        (LOGS / f"{self.hostname}.journal.log").write_text(p.stdout + p.stderr)

    # -- commands inside

    def run(self, cmd, check=True, timeout=60, user=None, input=None):
        """Run a shell command inside the container (as root, or as user)."""
        if user:
            cmd = f"runuser -u {user} -- sh -c {shlex.quote(cmd)}"
        argv = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={PATH}",
                "LANG=C.UTF-8", "HOME=/root", "sh", "-c", cmd]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise CommandFailed(f"[{self.hostname}] command failed ({p.returncode}): {cmd}\n"
                                f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def out(self, cmd, **kw):
        return self.run(cmd, **kw).stdout.strip()

    def popen(self, cmd, user=None):
        if user:
            cmd = f"runuser -u {user} -- sh -c {shlex.quote(cmd)}"
        argv = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={PATH}",
                "LANG=C.UTF-8", "HOME=/root", "sh", "-c", cmd]
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    # -- systemd and tinymq helpers

    def show(self, prop, unit="tinymq"):
        return self.out(f"systemctl show -P {prop} {unit}")

    def sql(self, statement, db="/var/lib/tinymq/tinymq.db", user=None, check=True):
        """Run SQL with the plain sqlite3 CLI (waiting up to 10 s for a lock)."""
        return self.run(f"sqlite3 -cmd '.timeout 10000' {db}", input=statement + "\n",
                        user=user, check=check).stdout.strip()

    def assert_unit_verifies(self, unit="tinymq.service"):
        """systemd-analyze verify finds nothing to say about the unit (--man=no: the
        minimal image has no man-db to look the Documentation= pages up)."""
        p = self.run(f"systemd-analyze verify --man=no {unit}", check=False)
        assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr

    def exposure(self, unit="tinymq.service"):
        """(overall exposure level, full report) of `systemd-analyze security UNIT`."""
        out = self.out(f"systemd-analyze security {unit} --no-pager")
        m = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", out)
        assert m, f"[{self.hostname}] no exposure level in systemd-analyze security's output:\n{out}"
        return float(m.group(1)), out

    def install(self, deb, extra=""):
        return self.run(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {extra} {deb} </dev/null",
                        timeout=300)


def boot_all(containers, timeout=90):
    for c in containers:
        c.start()
    for c in containers:
        c.wait_booted(timeout)
    return containers


def stop_all(containers):
    for c in containers:
        with contextlib.suppress(Exception):
            c.stop()


# ------------------------------------------------------------- the packages

def deb_version(tree=REPO):
    first = (Path(tree) / "debian/changelog").read_text().splitlines()[0]
    return re.match(r"\S+ \(([^)]+)\)", first).group(1)


def build_newer_deb(dest_dir, suffix="+systest1"):
    """Build the current tree again with a higher Debian version (the upgrade
    path): a temporary copy gets a new changelog entry and `make deb`."""
    version = deb_version() + suffix
    work = Path(tempfile.mkdtemp(prefix="tinymq-newer-"))
    try:
        src = work / "src"
        files = host(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                      "--exclude-standard"]).stdout.split("\0")
        for rel in filter(None, files):
            s = REPO / rel
            if s.is_file():
                d = src / rel
                d.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s, d)
        cl = src / "debian/changelog"
        date = host(["date", "-R"]).stdout.strip()
        cl.write_text(f"tinymq ({version}) unstable; urgency=medium\n\n"
                      f"  * System-test build of a newer version.\n\n"
                      f" -- tinymq developers <tinymq-devel@example.org>  {date}\n\n" + cl.read_text())
        host(["make", "-C", str(src), "deb"], timeout=600)
        out = Path(dest_dir) / f"tinymq_{version}_all.deb"
        shutil.copy2(src / "tinymq.deb", out)
        return out, version
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["image"]:
        for suite, root in ensure_images().items():
            print(f"{suite}: {root}")
    elif sys.argv[1:] == ["mirror"]:
        print(f"{MIRROR} ({MIRROR_FROM})")
    elif sys.argv[1:] == ["sweep"]:
        sweep()
    else:
        sys.exit(f"usage: {sys.argv[0]} image|mirror|sweep")


# ------------------------------------------------------ messages in the queue

DB = "/var/lib/tinymq/tinymq.db"


def readme_insert(c, host, data, user=None, port=9000, token="token"):
    """Enqueue exactly as the README says: a plain sqlite3 INSERT, no options."""
    stmt = f"INSERT into mqout (host,port,token,data) VALUES ('{host}','{port}','{token}','{data}');"
    return c.run(f"echo {shlex.quote(stmt)} | sqlite3 {DB}", user=user)


def count(c, table, where="1", user=None):
    return int(c.sql(f"SELECT count(*) FROM {table} WHERE {where};", user=user))


def paced_insert(c, host, prefix, n, delay=0.005):
    """Start enqueueing n messages prefix-0000.. one commit each, a few ms
    apart, from one sqlite3 process; returns the Popen."""
    loop = (f"i=0; while [ $i -lt {n} ]; do "
            f"printf \"INSERT INTO mqout (host,port,token,data) VALUES ('{host}',9000,'t','{prefix}-%04d');\\n\" $i; "
            f"i=$((i+1)); sleep {delay}; done")
    return c.popen(f"({loop}) | sqlite3 -cmd '.timeout 10000' {DB}")


def assert_exactly_once(receiver, sender, prefix, n, timeout=120):
    """Wait until the sender's queue for prefix is empty and the receiver has n
    rows; then every message must be there exactly once, in order."""
    like = f"data LIKE '{prefix}-%'"
    wait_for(f"{n} messages {prefix}-* in {receiver.hostname}'s mqin and none left in "
             f"{sender.hostname}'s mqout",
             lambda: count(sender, "mqout", like) == 0 and count(receiver, "mqin", like) >= n,
             timeout, interval=0.5)
    rows = receiver.sql(f"SELECT data FROM mqin WHERE {like} ORDER BY x;").split("\n")
    expected = [f"{prefix}-{i:04d}" for i in range(n)]
    missing = sorted(set(expected) - set(rows))
    duplicated = sorted({r for r in rows if rows.count(r) > 1})
    assert not missing and not duplicated and len(rows) == n, (
        f"{len(rows)} rows for {n} messages; missing {missing[:10]}, duplicated {duplicated[:10]}")
    assert rows == expected, "messages arrived out of order"


# ------------------------------------------------------- the service's journal

RELOADED = "configuration reloaded from "  # the daemon's line after a reload
RELOAD_FAILED = "reload failed, the running configuration stays: "


def journal(c, *matches, unit="tinymq"):
    """This boot's journal entries of the unit as dicts (journalctl -o json), only those
    with every FIELD=value of matches (e.g. "TINYMQ_PEER=hostb:9000") when given."""
    out = c.out(f"journalctl -u {unit} -b --no-pager -q -o json "
                + " ".join(shlex.quote(m) for m in matches), timeout=30)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def daemon_lines(c, prefix="", unit="tinymq"):
    """This boot's journal lines of the unit that start with prefix, oldest first."""
    out = c.run(f"journalctl -u {unit} -b --no-pager -q -o cat", timeout=30).stdout
    return [line for line in out.splitlines() if line.startswith(prefix)]


def reload_tinymq(c, outcome=RELOADED, timeout=10):
    """systemctl reload tinymq: it returns once the daemon runs with the new file (exit
    0) or has refused it (non-zero; the running configuration stays), as ExecReload is
    `tinymq reload`. The daemon's line saying how it went (outcome: RELOADED or
    RELOAD_FAILED), waited for only as long as journald takes to show it."""
    before = len(daemon_lines(c, outcome))
    p = c.run("systemctl reload tinymq", check=False)
    assert (p.returncode == 0) == (outcome == RELOADED), \
        f"systemctl reload exited {p.returncode} for {outcome!r}: {p.stdout}{p.stderr}"
    lines = wait_for(f"tinymqd on {c.hostname} to log {outcome!r}",
                     lambda: daemon_lines(c, outcome)[before:], timeout)
    return lines[0]
