"""A throwaway PostgreSQL server on 127.0.0.1 for tests (Debian's postgresql package).

initdb refuses to run as root, so as root the server runs as the package's ``postgres`` user
(``runuser``); its data and socket directory is a fresh temporary folder, removed at stop.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server: its URL (user grtr, a random password, database grtr) and how to stop it."""

    url: str
    password: str
    folder: Path
    bin: Path
    as_user: list[str]

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb, start on a free port of 127.0.0.1 with password authentication, create the database."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL under /usr/lib/postgresql (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="grtr-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_hex(8)
    pwfile = folder / "pw"
    pwfile.write_text(password + "\n")
    if as_user:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    port = free_port()
    data = folder / "data"

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "grtr", "--auth-local=trust",
        "--auth-host=scram-sha-256", f"--pwfile={pwfile}")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    server = PostgresServer(f"postgresql://grtr:{password}@127.0.0.1:{port}/grtr", password, folder, bin_dir, as_user)
    try:
        run(str(bin_dir / "createdb"), "-h", str(folder), "-p", str(port), "-U", "grtr", "grtr")
    except subprocess.CalledProcessError:
        server.stop()
        raise
    return server
