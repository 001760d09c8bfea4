"""Hostile clients for `make chaos`: abuse that must leave every port up and bounded
(docs/security.md). Each attack returns one report row: (name, answer, measured, ok)."""

import random
import socket
import string
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from http.client import HTTPConnection

from mesh import http


def _address(url):
    parts = urllib.parse.urlsplit(url)
    return parts.hostname, parts.port


def _raw(url, data, timeout=10.0):
    """Sends `data` on a new connection and returns the status line's code (0: none)."""
    with socket.create_connection(_address(url), timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        try:
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            pass
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _growth(before, after):
    return len(after) / max(1, len(before)) - 1.0


def junk_http(mesh, count=2000):
    """Random methods up to 1 KB on unknown paths must not grow the gateway's /metrics."""
    rng = random.Random(7)

    def send(n):
        for _ in range(n):
            method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(1, 1024)))
            path = "/" + "".join(rng.choices(string.ascii_lowercase, k=16))
            _raw(mesh.gateway, f"{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())

    scrape = lambda: urllib.request.urlopen(mesh.gateway + "/metrics", timeout=10).read().decode()
    send(100)
    scrape()
    before = scrape()
    send(count)
    after = scrape()
    growth = _growth(before, after)
    return (f"{count} random methods on unknown paths (gateway /metrics)",
            f"{len(before)} → {len(after)} bytes", f"growth {growth:.1%} (must be < 10 %)",
            growth < 0.10)


def junk_grpc(mesh, count=300):
    """Unknown gRPC paths must not grow a service's RPC metrics (the only families a
    request can label; the others move with the load on their own)."""
    port = mesh.ports["order"]

    def send(first, n):
        for i in range(first, first + n):
            subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-X", "POST",
                            "-H", "content-type: application/grpc", "-H", "te: trailers",
                            "--data-binary", "", f"http://127.0.0.1:{port}/junk.v{i}.S{i}/M{i}"],
                           capture_output=True, timeout=10)

    rpc = lambda: "\n".join(l for l in mesh.metrics("order").splitlines() if l.startswith("rpc_server_"))
    send(0, 20)
    before = rpc()
    send(20, count)
    after = rpc()
    growth = _growth(before, after)
    series = lambda text: len(text.splitlines())
    return (f"{count} unknown gRPC paths (order service RPC metrics)",
            f"{series(before)} → {series(after)} lines, {len(before)} → {len(after)} bytes",
            f"growth {growth:.1%} (must be < 10 %)", growth < 0.10 and series(before) == series(after))


def stalled_uploads(mesh, connections=100):
    """Bodies declared at 1 MiB, 1,000,000 bytes sent, then nothing: closed with 408 (or
    refused at once), the gateway's memory bounded, other clients served meanwhile."""
    baseline = mesh.rss_mib("gateway")
    head = (b"POST /v1/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1048576\r\n\r\n")
    chunk = b"x" * 1_000_000
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(_address(mesh.gateway), timeout=2)
        try:
            sock.sendall(head + chunk)
        except OSError:
            pass  # a refused body is not read; the attacker does not care
        socks.append(sock)
    peak = mesh.rss_mib("gateway")
    legit = http("GET", mesh.gateway + "/v1/products/CHAOS-A")[0]
    started = time.monotonic()
    statuses = []
    for sock in socks:
        sock.settimeout(max(0.1, 20 - (time.monotonic() - started)))
        reply = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            pass
        sock.close()
        code = reply.split(b" ", 2)[1] if reply.startswith(b"HTTP/") else b"closed"
        statuses.append(code.decode())
    closed_in = time.monotonic() - started
    time.sleep(2)
    after = mesh.rss_mib("gateway")
    counts = ", ".join(f"{s}×{statuses.count(s)}" for s in sorted(set(statuses)))
    ok = (legit == 200 and closed_in < 15 and "408" in statuses and peak - baseline < 40)
    return (f"{connections} stalled 1 MB uploads", counts,
            f"all closed in {closed_in:.1f} s; gateway RSS {baseline:.0f} → {peak:.0f} → {after:.0f} MiB; "
            f"a GET meanwhile: {legit}", ok)


def password_guessing(mesh, email, guesses=12):
    """Wrong passwords for one account from one address: a few are checked, then 429
    with RetryInfo (the throttle is in the user service, behind the gateway too)."""
    answers = []
    retry = None
    for n in range(guesses):
        status, reply = http("POST", mesh.gateway + "/v1/auth:login",
                             {"email": email, "password": f"guess number {n}"})
        answers.append(status)
        if status == 429:
            retry = next((d.get("retryDelay") for d in reply.get("details", [])
                          if d.get("@type", "").endswith("RetryInfo")), retry)
    counts = ", ".join(f"{s}×{answers.count(s)}" for s in sorted(set(answers)))
    ok = answers.count(401) <= 5 and 429 in answers and retry is not None
    return (f"{guesses} wrong passwords for one account", counts,
            f"checked {answers.count(401)}, then throttled (RetryInfo {retry})", ok)


def watch_flood(mesh, token, order_id, streams=12):
    """One customer opening watch after watch on one order: 429 past the per-user cap."""
    host, port = _address(mesh.gateway)
    opened, statuses = [], []
    for _ in range(streams):
        conn = HTTPConnection(host, port, timeout=10)
        conn.request("GET", f"/v1/orders/{order_id}:watch", headers={"authorization": f"Bearer {token}"})
        response = conn.getresponse()
        statuses.append(response.status)
        opened.append(conn)
    for conn in opened:
        conn.close()
    counts = ", ".join(f"{s}×{statuses.count(s)}" for s in sorted(set(statuses)))
    ok = statuses.count(200) == 10 and statuses.count(429) == streams - 10
    return (f"{streams} watches of one order by one customer", counts,
            "10 per user, then 429 (RESOURCE_EXHAUSTED)", ok)


def hostile_clients(mesh, victim_token, victim_order):
    """The attacks that store nothing (stored data is compared around them)."""
    rows = [junk_http(mesh), junk_grpc(mesh), stalled_uploads(mesh)]
    if victim_order:
        rows.append(watch_flood(mesh, victim_token, victim_order))
    return rows


def sign_in_attacks(mesh):
    """Password guessing against an account made for it (this stores a user)."""
    email = f"guessed-{uuid.uuid4().hex[:8]}@example.com"
    http("POST", mesh.gateway + "/v1/users", {"email": email, "password": "correct horse battery"})
    return [password_guessing(mesh, email)]
