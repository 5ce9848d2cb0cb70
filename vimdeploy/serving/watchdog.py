"""No orphans: what a killed `vimdeploy serve` leaves is removed, at once by a watchdog and at the next start.

SIGKILL of `vimdeploy serve` runs none of its own cleanup. tritonserver gets a parent-death
signal (server.py), but the Python backend stubs are tritonserver's children, not ours, and
a parent-death signal cannot reach them: Triton starts them, and the setting is cleared at
fork. Measured with Triton 2.51 under load, SIGKILL of `vimdeploy serve` with only that
signal left stubs running with PPID 1 (see docs/reliability.md).

So `vimdeploy serve` starts this file as a process of its own (`Watchdog`: stdlib only, run
with `python -I -S`, no torch: it is up in a few tens of ms) that reads a pipe whose only
writer is `vimdeploy serve`. The kernel closes that pipe when `vimdeploy serve` dies, however
it dies; on that EOF the watchdog SIGKILLs the server's process group (tritonserver made it
for itself, and its stubs stay in it), removes the server's shared-memory regions and its
workspace, and exits. A clean stop tells it "done" first. Why this and not a process group
alone: a group is only killed by someone, and with `vimdeploy serve` gone nobody would.
The watchdog has a session of its own, so a Ctrl-C or a kill of the terminal's process group
does not take it before it has done its work.

`sweep()` is the second line, run by every `vimdeploy serve` at start: regions, workspaces and
server processes named after a `vimdeploy serve` PID that no longer exists (the watchdog
itself killed too, or a machine that lost power mid-run) are removed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
#: `vimdeploy serve`'s names carry its PID: shared memory `vimdeploy<pid>_<hex>_...`,
#: workspaces `<tmp>/vimdeploy-serve-<pid>-...`
SHM_RE = re.compile(r"vimdeploy(\d+)_[0-9a-f]{8}_")
WORKSPACE_PREFIX = "vimdeploy-serve-"
WORKSPACE_RE = re.compile(WORKSPACE_PREFIX + r"(\d+)-")
#: executables of a server (argv[0]'s name) that the sweep may kill
SERVER_PROGRAMS = ("tritonserver", "triton_python_backend_stub")


def shm_prefix() -> str:
    """A name prefix for the Python backend's shared-memory regions, unique to one server:
    the names are global to the machine, so two servers with the default prefix collide."""
    return f"vimdeploy{os.getpid()}_{os.urandom(4).hex()}_"


def make_workspace() -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-"))


def remove_shm(prefix: str) -> None:
    """Regions a server that did not exit cleanly left in /dev/shm (Triton unlinks them otherwise)."""
    for leftover in SHM_DIR.glob(prefix + "*"):
        leftover.unlink(missing_ok=True)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _owner_gone(name: str, pattern: re.Pattern, uid: int, path: Path) -> bool:
    match = pattern.match(name)
    try:
        return bool(match) and path.lstat().st_uid == uid and _gone(int(match.group(1)))
    except OSError:
        return False


def sweep() -> dict[str, int]:
    """Remove what servers of `vimdeploy serve` processes that no longer exist left behind.

    Only this user's: processes of SERVER_PROGRAMS whose command line names a dead server's
    shared memory (SIGKILL), its /dev/shm regions, its workspaces. Returns the counts.
    """
    uid = os.getuid()
    found = {"processes": 0, "shm": 0, "workspaces": 0}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != uid:
                continue
            argv = (proc / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if Path(argv[0]).name not in SERVER_PROGRAMS:
            continue
        owners = {int(m.group(1)) for arg in argv for m in SHM_RE.finditer(arg)}
        if owners and all(_gone(pid) for pid in owners):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                found["processes"] += 1
            except OSError:
                pass
    for region in SHM_DIR.glob("vimdeploy*"):
        if _owner_gone(region.name, SHM_RE, uid, region):
            region.unlink(missing_ok=True)
            found["shm"] += 1
    for folder in Path(tempfile.gettempdir()).glob(WORKSPACE_PREFIX + "*"):
        if folder.is_dir() and _owner_gone(folder.name, WORKSPACE_RE, uid, folder):
            shutil.rmtree(folder, ignore_errors=True)
            found["workspaces"] += 1
    return found


class Watchdog:
    """The watchdog process of one server; `guard(pgid)` once the server runs, `release()` at a clean end."""

    def __init__(self, workspace: Path, shm: str):
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(Path(__file__).resolve()), str(workspace), shm],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _send(self, line: str) -> None:
        try:
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):  # it died (or was released): sweep() at the next start remains
            pass

    def guard(self, pgid: int) -> None:
        """From now on, the death of this process kills process group `pgid`."""
        self._send(f"pgid {pgid}")

    def release(self) -> None:
        """A clean stop: the server and its files are gone; the watchdog exits without doing anything."""
        self._send("done")
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _kill_group(pgid: int, timeout_s: float = 5.0) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # until the kernel has taken them (their memory, their shm mappings)
        try:
            os.killpg(pgid, 0)
        except OSError:
            return
        time.sleep(0.02)


def main(workspace: str, shm: str) -> None:  # pragma: no cover - runs as its own process (tests kill it)
    pgid = None
    for line in sys.stdin.buffer:
        word, _, value = line.decode().strip().partition(" ")
        if word == "done":
            return
        if word == "pgid":
            pgid = int(value)
    # EOF without "done": `vimdeploy serve` died.
    if pgid is not None:
        _kill_group(pgid)
    remove_shm(shm)
    shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
