"""The receivers: nginx from Debian's packages when present, else the raw uvloop one (``bench.receiver``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench.procs import Child, wait_port
from daemon.tools.embedded import free_port

_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} backlog=4096{tls};
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


_TLS = """ ssl;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:tls:10m"""


def certificate(workdir: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (``cert.pem``, ``key.pem`` in ``workdir``), made once; the clients
    of a TLS run trust it through ``SSL_CERT_FILE`` (Python's default context reads it: the router's too)."""
    cert = workdir / "cert.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(workdir / "key.pem"), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
    return cert


class Receiver:
    """A running receiver: ``url(path)`` for endpoints, ``stop()`` to end it."""

    def __init__(self, kind: str, port: int, child: Child, scheme: str = "http") -> None:
        self.kind = kind
        self.port = port
        self.child = child
        self.scheme = scheme

    def url(self, path: str = "/hook") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        await self.child.stop(within_s=5)


async def start_python(workdir: Path, mode: str = "ok", record: bool = False) -> Receiver:
    argv = [sys.executable, "-m", "bench.receiver", "--mode", mode] + (["--record"] if record else [])
    child = Child(f"receiver-{mode}", argv, workdir / f"receiver-{mode}.log", pipe_stdout=True)
    await child.start()
    try:
        port = int(await child.read_line())
    except BaseException:
        await child.stop()
        raise
    return Receiver("python" if mode == "ok" else "blackhole", port, child)


async def start_nginx(workdir: Path, binary: str, tls: bool = False) -> Receiver:
    conf_dir = workdir / "nginx"
    conf_dir.mkdir(exist_ok=True)
    port = free_port()
    conf = conf_dir / "nginx.conf"
    if tls:
        certificate(workdir)
    conf.write_text(_NGINX_CONF.format(dir=conf_dir, port=port, tls=_TLS.format(dir=workdir) if tls else ""))
    argv = [binary, "-p", str(conf_dir), "-e", str(conf_dir / "error.log"), "-c", str(conf)]
    child = Child("nginx", argv, conf_dir / "stdout.log")
    await child.start()
    try:
        await wait_port(port, child=child)
    except BaseException:
        await child.stop()
        raise
    return Receiver("nginx over TLS 1.3" if tls else "nginx", port, child, "https" if tls else "http")


async def start_fast(workdir: Path, kind: str, tls: bool = False) -> Receiver:
    """The receiver for throughput: ``kind`` is ``auto`` (nginx if installed), ``nginx`` or ``python``; ``tls``
    (nginx only) serves https with ``certificate``."""
    binary = find_nginx()
    if (kind == "nginx" or tls) and binary is None:
        raise RuntimeError("--receiver nginx or --tls, but no nginx is installed (apt-get install nginx)")
    if kind != "python" and binary is not None:
        return await start_nginx(workdir, binary, tls)
    return await start_python(workdir)
