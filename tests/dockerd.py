"""A private Docker engine for tests and benchmarks: its own socket, data root and exec root.

``PrivateDockerd`` runs Debian's ``dockerd`` with ``--bridge=none --iptables=false`` so that it
leaves the machine's network alone, imports a tiny image built from the static busybox, and
tears everything down again: containers, the daemon (and the containerd it started), mounts
under its root, its files. It needs root and imports neither pytest nor the exporter, so
``bench/`` uses it too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from contextlib import closing
from pathlib import Path

import docker

from tests.harness import freeze

BUSYBOX_IMAGE = "boxwatch-busybox:test"


class PrivateDockerd:
    """One ``dockerd`` under ``root`` (keep it short: unix socket paths are limited to 108 bytes)."""

    def __init__(self, dockerd: str = "dockerd", busybox: str = "/bin/busybox", root: Path | None = None,
                 extra_args: tuple[str, ...] = ("--shutdown-timeout=2",)):
        self.dockerd = dockerd
        self.busybox = busybox
        self.root = Path(root or tempfile.mkdtemp(prefix="bw-", dir="/tmp"))
        self.socket = self.root / "d.sock"
        self.url = f"unix://{self.socket}"
        self.extra_args = extra_args
        self.log_path = self.root / "dockerd.log"
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ daemon

    def start(self, timeout: float = 60.0) -> PrivateDockerd:
        """Start the daemon and wait until it answers a ping."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("dockerd is already running")
        argv = [
            self.dockerd,
            f"--host={self.url}",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'docker.pid'}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._pings():
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"dockerd did not answer within {timeout}s:\n{self.log_tail()}")

    def _pings(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            with closing(docker.DockerClient(base_url=self.url, timeout=2)) as client:
                return bool(client.ping())
        except docker.errors.DockerException:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the daemon and wait; dockerd stops its containers and its containerd."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._kill_leftover_containerd()

    def pause(self) -> None:
        """Freeze the daemon (SIGSTOP): its socket accepts connections but nothing answers."""
        assert self.proc is not None
        freeze(self.proc.pid)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def _kill_leftover_containerd(self) -> None:
        """The containerd this daemon started (its pid file is under our exec root), if it outlived it."""
        pid_file = self.root / "exec" / "containerd" / "containerd.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            return
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    # ------------------------------------------------------------------ content

    def client(self, timeout: float = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def import_busybox(self, tag: str = BUSYBOX_IMAGE) -> str:
        """Import a rootfs of ``/bin/busybox`` and its applet links as ``tag`` (no registry)."""
        tarball = self.root / "busybox.tar"
        if not tarball.exists():
            _busybox_tarball(self.busybox, tarball)
        repository, _, version = tag.partition(":")
        with closing(self.client()) as client:
            client.api.import_image_from_file(str(tarball), repository=repository, tag=version or "latest")
        return tag

    def remove_all_containers(self) -> None:
        with closing(self.client()) as client:
            for container in client.containers.list(all=True):
                container.remove(force=True)

    # ------------------------------------------------------------------ teardown

    def cleanup(self) -> None:
        """Remove containers, stop the daemon, unmount what is left under the root, delete it."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.resume()
                self.remove_all_containers()
            except docker.errors.DockerException:
                pass  # the daemon is stopping anyway; stop() below kills what remains
        self.stop()
        for mount_point in reversed(_mounts_under(self.root)):
            subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def leftover_processes(self) -> list[str]:
        """Command lines of live processes that mention this daemon's root."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(self.root) in cmdline:
                found.append(f"{entry.name} {cmdline.strip()}")
        return found


def _busybox_tarball(busybox: str, tarball: Path) -> None:
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    with tarfile.open(tarball, "w") as tar:
        for directory in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return sorted(p for p in points if p.startswith(prefix))
