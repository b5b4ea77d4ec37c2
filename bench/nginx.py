"""nginx from Debian's packages as the reference: HTTPS on 127.0.0.1, PUT uploads to disk.

What a user would otherwise put in front of a folder: TLS 1.3 only, groups X25519 and
P-256, the same ECDSA P-256 certificate as our server (made by ``imgshare certs``), the
dav module accepting ``PUT /upload/NAME`` into a folder on the same disk as our data
folder. nginx writes the body to a temp file and renames it into place; it never
fsyncs (we do: "acknowledged means durable"), which docs/performance.md notes.

nginx runs as a child process in the foreground (``daemon off``) with its own prefix
folder, so nothing of the system's nginx set-up is used or changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

NGINX = Path("/usr/sbin/nginx")
_POLICY_RC_D = Path("/usr/sbin/policy-rc.d")

CONFIG = """\
daemon off;
master_process on;
worker_processes {workers};
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    sendfile on;
    keepalive_timeout 900s;
    keepalive_requests 100000;
    client_body_temp_path {www}/.tmp;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1;
        ssl_session_tickets off;
        client_max_body_size 0;
        location /upload/ {{
            root {www};
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw;
        }}
    }}
}}
"""


def ensure_installed() -> str:
    """Install Debian's nginx if missing (apt-get, as root); return ``nginx -v``.

    The package's start-up script is held back (policy-rc.d answering 101) so that
    installing does not start a system nginx on port 80.
    """
    if not NGINX.exists():
        if os.geteuid() != 0:
            raise RuntimeError("nginx is missing: run `apt-get install nginx` as root")
        print("bench: installing nginx with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        placed_policy = False
        if not _POLICY_RC_D.exists():
            _POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
            _POLICY_RC_D.chmod(0o755)
            placed_policy = True
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
            )
        finally:
            if placed_policy:
                _POLICY_RC_D.unlink()
    info = subprocess.run([str(NGINX), "-V"], capture_output=True, text=True, check=True)
    if "--with-http_dav_module" not in info.stderr:
        raise RuntimeError(f"{NGINX} was built without the dav module")
    return info.stderr.splitlines()[0].split(":", 1)[-1].strip()


def write_config(prefix: Path, port: int, cert: Path, key: Path, workers: int = 0) -> Path:
    """Write ``prefix/nginx.conf`` and make its folders; uploads land in ``prefix/www``."""
    www = prefix / "www"
    for folder in (prefix, www / "upload", www / ".tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(
        CONFIG.format(
            workers=workers or "auto",
            prefix=prefix,
            www=www,
            port=port,
            cert=cert,
            key=key,
        )
    )
    return config


def argv(prefix: Path, config: Path) -> list[str]:
    """The command line that runs nginx in the foreground with this prefix."""
    return [str(NGINX), "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)]


def upload_folder(prefix: Path) -> Path:
    return prefix / "www" / "upload"


def clear_uploads(prefix: Path) -> None:
    """Delete what earlier runs uploaded (keeps the disk and page cache comparable)."""
    folder = upload_folder(prefix)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


def worker_pids(master_pid: int) -> list[int]:
    """The master and its worker processes (for RSS)."""
    pids = [master_pid]
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    except OSError:
        children = []
    return pids + [int(pid) for pid in children]
