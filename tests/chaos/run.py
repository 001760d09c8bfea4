#!/usr/bin/env python3
"""`make chaos`: faults, load and hostile input against the mesh, then the design's
invariants checked by reading every database and every topic.

    run.py              the native mesh (scripts/with-infra.sh provides PostgreSQL and
                        tansu and says how to restart the one and pause the other)
    run.py --compose    docker-compose.yml's containers (run by `scripts/compose-test.sh
                        chaos`, which brings the stack up and tears it down)

mesh.py holds the two forms of the mesh and the faults each can cause, attacks.py the
hostile clients, topics.py the topic reader; the invariants themselves are Rust
(src/lib.rs), shared with the crash test and the inventory tests.
Mixed traffic runs through the gateway the whole time; the report for each form
goes into its own section of docs/reliability.md.
"""

import base64
import contextlib
import datetime
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter, defaultdict
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attacks import hostile_clients, sign_in_attacks
from mesh import SERVICES, ComposeMesh, NativeMesh, http, http_status

ROOT = Path(__file__).resolve().parents[2]
BROKER_OUTAGE_SECS = int(os.environ.get("CHAOS_BROKER_OUTAGE_SECS", "15"))
SOAK_SECS = int(os.environ.get("CHAOS_SOAK_SECS", "60"))
SEED = int(os.environ.get("CHAOS_SEED", "20261127"))
WORKERS = int(os.environ.get("CHAOS_WORKERS", "4"))
ALL_SCENARIOS = ["sigkill_each", "relay_mid_batch", "broker_outage", "postgres_restart",
                 "slow_and_partitioned", "peer_moved", "rolling_restart", "soak"]
# CHAOS_SCENARIOS=broker_outage,soak runs a subset (the report then says so).
# With CHAOS_REPLICAS=2 (`make chaos-replicas`): faults that one copy of each process
# suffers while the other carries the load.
REPLICA_SCENARIOS = ["sigkill_one_copy_each", "freeze_one_copy", "rolling_restart_copies",
                     "redis_outage"]
REPLICAS = int(os.environ.get("CHAOS_REPLICAS", "1"))
SCENARIOS = [s for s in os.environ.get(
    "CHAOS_SCENARIOS", ",".join(REPLICA_SCENARIOS if REPLICAS > 1 else ALL_SCENARIOS)).split(",") if s]
SKUS = ["CHAOS-A", "CHAOS-B", "CHAOS-C", "CHAOS-D"]
STOCK = 1_000_000


def package(contract):
    """A contract's package (`shop.order.v1`), read from its events.proto as the
    services' build reads it: the names below follow the protos, never a copy."""
    text = (ROOT / f"proto/shop/{contract}/v1/events.proto").read_text()
    return re.search(r"^package ([\w.]+);", text, re.M).group(1)


def rpc(contract, service, method):
    """`package.Service/Method`, as grpcurl and the gRPC path name it."""
    return f"{package(contract)}.{service}/{method}"


ORDER_EVENTS_TOPIC = f"{package('order')}.events"
REPORT = ROOT / "docs" / "reliability.md"


def log(message):
    print(f"\033[1m==> {message}\033[0m", file=sys.stderr, flush=True)


def bearer(token):
    return {"authorization": f"Bearer {token}"}


# --- load -------------------------------------------------------------------------

class Load:
    """Mixed traffic from WORKERS threads; every outcome is counted under the phase
    it happened in. Writes carry an Idempotency-Key and are retried with the same
    key on connection errors and 502/503/504, for at most ~10 s."""

    RETRYABLE = {0, 502, 503, 504}

    def __init__(self, mesh, customers):
        self.mesh, self.customers = mesh, customers
        self.phase = "warm-up"
        self.running = True
        self.paused = threading.Event()
        self.lock = threading.Lock()
        self.sent = Counter()
        self.in_flight = 0
        self.failed = Counter()
        # Requests whose first attempt failed (a connection error or 502/503/504),
        # whether or not a retry then succeeded.
        self.first_try_failed = Counter()
        self.first_failures = defaultdict(list)
        self.latencies = defaultdict(list)
        # The three slowest attempts of each phase: (seconds, what was asked).
        self.slowest = defaultdict(list)
        self.failures = defaultdict(list)
        self.statuses = Counter()
        self.confirmed = {}   # order id -> user id, as clients saw it
        self.cancelled = set()
        self.latency_max = defaultdict(float)
        self.threads = [threading.Thread(target=self._work, args=(i,), daemon=True)
                        for i in range(WORKERS)]

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join(timeout=30)

    def call(self, method, path, token, body=None, retry=True):
        key = {"Idempotency-Key": uuid.uuid4().hex} if method == "POST" else {}
        phase = self.phase
        with self.lock:
            self.in_flight += 1
        try:
            return self._call(method, path, token, body, retry, key, phase)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _call(self, method, path, token, body, retry, key, phase):
        started = time.monotonic()
        delay = 0.25
        # Spread over every gateway; a retry goes to the next one.
        gateways = getattr(self.mesh, "gateways", [self.mesh.gateway])
        turn = random.randrange(len(gateways))
        first = True
        while True:
            attempt = time.monotonic()
            status, reply = http(method, gateways[turn % len(gateways)] + path, body,
                                 {**bearer(token), **key}, timeout=12)
            with self.lock:
                took = time.monotonic() - attempt
                self.latency_max[phase] = max(self.latency_max[phase], took)
                self.latencies[phase].append(took)
                slowest = self.slowest[phase]
                slowest.append((took, f"{method} {re.sub('[0-9a-f-]{36}', '{id}', path.split('?')[0])}"))
                slowest.sort(reverse=True)
                del slowest[3:]
                if first and status in self.RETRYABLE:
                    self.first_try_failed[phase] += 1
                    if len(self.first_failures[phase]) < 3:
                        self.first_failures[phase].append(
                            f"{method} {path.split('?')[0]}: {status} {json.dumps(reply)[:120]}")
            first = False
            if status not in self.RETRYABLE or not retry or time.monotonic() - started > 10:
                break
            turn += 1
            if len(gateways) == 1:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        with self.lock:
            self.sent[phase] += 1
            self.statuses[status] += 1
            if status == 0 or status >= 500:
                self.failed[phase] += 1
                if len(self.failures[phase]) < 5:
                    self.failures[phase].append(f"{method} {path}: {status} {json.dumps(reply)[:160]}")
        return status, reply

    def _work(self, index):
        rng = random.Random(SEED + index)
        mine = []
        while self.running:
            if self.paused.is_set():
                time.sleep(0.05)
                continue
            user_id, token = self.customers[rng.randrange(len(self.customers))]
            roll = rng.random()
            if roll < 0.6:
                lines = [{"sku": s, "quantity": rng.randint(1, 3)}
                         for s in rng.sample(SKUS, rng.randint(1, 2))]
                status, reply = self.call("POST", "/v1/orders", token, {"lines": lines})
                order = reply.get("order", {}) if status == 201 else {}
                if order.get("status") == "ORDER_STATUS_CONFIRMED":
                    with self.lock:
                        self.confirmed[order["orderId"]] = user_id
                    mine.append((order["orderId"], token))
            elif roll < 0.75 and mine:
                order_id, owner = mine[rng.randrange(len(mine))]
                self.call("GET", f"/v1/orders/{order_id}", owner)
            elif roll < 0.9:
                self.call("GET", "/v1/products?pageSize=10", token)
            elif mine:
                order_id, owner = mine.pop(rng.randrange(len(mine)))
                status, reply = self.call("POST", f"/v1/orders/{order_id}:cancel", owner,
                                          {"reason": "chaos"})
                if status == 200 and reply.get("order", {}).get("status") == "ORDER_STATUS_CANCELLED":
                    with self.lock:
                        self.cancelled.add(order_id)


# --- scenarios --------------------------------------------------------------------

class Chaos:
    def __init__(self, mesh, load):
        self.mesh, self.load = mesh, load
        self.notes = []   # (scenario, what happened)
        self.phases = ["warm-up"]
        self.violations = []

    def phase(self, name, seconds=0.0):
        log(f"scenario: {name}")
        self.phases.append(name)
        self.load.phase = name
        time.sleep(seconds)

    def note(self, what):
        self.notes.append((self.load.phase, what))
        log(f"  {what}")

    def sigkill_each(self):
        for name in ("user", "inventory", "order", "gateway"):
            self.phase(f"sigkill {name}", 2)
            self.mesh.killer(name)()
            killed = time.monotonic()
            time.sleep(1)
            self.mesh.revive(name)
            self.note(f"{name}: SIGKILL, restarted, SERVING again {time.monotonic() - killed:.1f} s after the kill")
            time.sleep(3)

    def relay_mid_batch(self):
        self.phase("sigkill order relay mid-batch", 1)
        self.mesh.pause_broker()
        time.sleep(6)
        backlog = self.mesh.backlog()["order"]
        kill = self.mesh.killer("order")
        self.mesh.resume_broker()
        resumed = time.monotonic()
        # The relay's batch was waiting for the broker's acknowledgements: kill it
        # while they arrive, before it can stamp the rows as sent.
        time.sleep(random.Random(SEED).randint(10, 50) / 1000)
        after_ms = (kill() - resumed) * 1000
        left = self.mesh.backlog()["order"]
        self.mesh.revive("order")
        self.note(f"broker paused 6 s while the order outbox grew to {backlog} events; SIGKILL "
                  f"{after_ms:.0f} ms after it came back, {left} events not yet stamped as sent")
        time.sleep(3)

    def broker_outage(self):
        self.phase("broker stopped", 0)
        before = len(self.load.confirmed)
        self.mesh.pause_broker()
        # Shorter than the consumers' 30 s session timeout: no rebalance, they resume
        # (a rebalance while the broker is unresponsive wedges tansu 0.6; see README).
        time.sleep(BROKER_OUTAGE_SECS)
        during = len(self.load.confirmed) - before
        backlog = self.mesh.backlog()
        # The events written during the outage: the relay must publish all of them.
        last = {n: int(self.mesh.sql(n, "SELECT coalesce(max(id), 0) FROM outbox_events")[0][0])
                for n in SERVICES}
        self.mesh.resume_broker()
        self.note(f"broker paused {BROKER_OUTAGE_SECS} s: {during} orders confirmed meanwhile; outbox backlog then {backlog}")
        if during == 0:
            self.violations.append("no order was confirmed while the broker was away")
        back = time.monotonic()
        # New orders keep adding to the outbox, so what must drain is what the outage left.
        left = lambda: sum(int(self.mesh.sql(n, "SELECT count(*) FROM outbox_events WHERE "
                                                f"published_at IS NULL AND id <= {last[n]}")[0][0])
                           for n in SERVICES)
        if self.wait("the outage's events published after the broker came back", lambda: left() == 0, 180):
            self.note(f"every event written during the outage published {time.monotonic() - back:.1f} s "
                      "after the broker came back")

    def postgres_restart(self):
        self.phase("postgresql restarted", 2)
        if not self.mesh.can_restart_postgres:
            self.note("skipped: PostgreSQL is not this run's own (DATABASE_URL was given)")
            return
        pids = self.mesh.pids()
        seen_down = set()
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                for name in SERVICES:
                    if not self.mesh.healthy(name):
                        seen_down.add(name)
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        self.mesh.stop_postgres()
        time.sleep(5)
        self.mesh.start_postgres()
        self.wait("every service SERVING again on its own",
                  lambda: all(self.mesh.healthy(n) for n in SERVICES), 60)
        stop.set()
        watcher.join()
        exited = [n for n, pid in pids.items() if self.mesh.pids().get(n) != pid]
        if exited:
            self.violations.append(f"processes exited during the PostgreSQL restart: {exited}")
        self.note(f"server stopped for 5 s, then started; NOT_SERVING seen on {sorted(seen_down) or 'none'}; "
                  f"all SERVING {time.monotonic() - started:.1f} s after the stop, no process restarted")
        if seen_down != {"user", "inventory", "order"}:
            self.violations.append(f"only {sorted(seen_down)} went NOT_SERVING without their database")
        time.sleep(2)

    def slow_and_partitioned(self):
        slow, cut = self.mesh.slow_phase, self.mesh.partition_phase
        self.phase(slow, 0)
        self.mesh.slow_inventory()
        time.sleep(6)
        self.mesh.heal_inventory()
        self.phase(cut, 0)
        self.mesh.partition_inventory()
        time.sleep(6)
        self.mesh.heal_inventory()
        healed = time.monotonic()
        self.wait("an order confirmed through inventory after the partition", self.order_confirmed, 60)
        self.note(f"a new order was confirmed {time.monotonic() - healed:.1f} s after the heal")
        worst = max(self.load.latency_max[slow], self.load.latency_max[cut])
        self.note(f"slowest single request while inventory was slow or cut off: {worst:.1f} s "
                  "(order deadline 4 s, RPC timeout 1 s)")
        if worst > 8:
            self.violations.append(f"a request hung for {worst:.1f} s behind a slow dependency")
        self.phase("after the partition healed", 0)
        self.wait("no order left pending after the partition", lambda: int(self.mesh.sql(
            "order", self.mesh.pending_sql)[0][0]) == 0, 90)

    def peer_moved(self):
        self.phase("inventory moved to a new address", 1)
        if not self.mesh.can_move:
            self.note("skipped: natively every process keeps its loopback address")
            return
        started = time.monotonic()
        old, new = self.mesh.move("inventory")
        self.wait("inventory answering through the gateway at its new address",
                  lambda: http_status(f"{self.mesh.gateway}/v1/products/{SKUS[0]}") == 200, 60)
        via_gateway = time.monotonic() - started
        self.wait("an order confirmed through inventory's new address", self.order_confirmed, 60)
        self.note(f"stopped and started again at {new} (was {old}): GetProduct through the gateway "
                  f"answered {via_gateway:.1f} s after the stop, a new order was confirmed "
                  f"{time.monotonic() - started:.1f} s after it (names are resolved again every 5 s)")
        if old == new:
            self.violations.append("inventory came back on its old address: the move was not exercised")

    def order_confirmed(self):
        """One order through the gateway, the order service and inventory."""
        status, reply = http("POST", f"{self.mesh.gateway}/v1/orders",
                             {"lines": [{"sku": SKUS[0], "quantity": 1}]}, bearer(self.load.customers[0][1]))
        return reply.get("order", {}).get("status") == "ORDER_STATUS_CONFIRMED"

    def rolling_restart(self):
        self.phase("rolling restart", 1)
        for name in ("user", "inventory", "order", "gateway"):
            started = time.monotonic()
            code = self.mesh.stop(name)
            stopped = time.monotonic() - started
            self.mesh.start(name)
            self.note(f"{name}: SIGTERM → exit {code} in {stopped:.1f} s, SERVING again after "
                      f"{time.monotonic() - started:.1f} s")
            if code != 0:
                self.violations.append(f"{name} exited {code} on SIGTERM")
            time.sleep(2)
        failed = self.load.failed["rolling restart"]
        self.note(f"{self.load.sent['rolling restart']} requests, {failed} failed")
        if failed:
            self.violations.append(f"{failed} failed requests during the rolling restart: "
                                   f"{self.load.failures['rolling restart']}")

    # --- with several copies of every process (CHAOS_REPLICAS=2) -----------------

    def _expect_no_failures(self, phase, first_try=True):
        """Nothing failed in `phase`: no request after the client's retries and, where
        the mesh must absorb the fault itself, none at its first attempt either."""
        failed, first = self.load.failed[phase], self.load.first_try_failed[phase]
        self.note(f"{self.load.sent[phase]} requests, {first} failed at the first attempt, "
                  f"{failed} after the client's retries")
        if first:
            self.note(f"first attempts that failed: {self.load.first_failures[phase]}")
        if failed or (first_try and first):
            self.violations.append(f"{phase}: {first} requests failed at the first attempt, "
                                   f"{failed} after retries: {self.load.failures[phase]}")

    def sigkill_one_copy_each(self):
        for name in ("user", "inventory", "order", "gateway"):
            phase = f"sigkill one {name} copy"
            self.phase(phase, 2)
            key = f"{name}#1"
            self.mesh.killer(key)()
            time.sleep(3)
            self.mesh.revive(key)
            self.note(f"{key} SIGKILLed; the other copy carried the load for 3 s; revived")
            time.sleep(1)
            # A gateway that dies drops its clients' connections: they go to the other
            # gateway, as they would behind a load balancer; the services' copies are
            # the mesh's own to absorb.
            self._expect_no_failures(phase, first_try=name != "gateway")

    def resilience_counters(self):
        """Hedges, retries a budget refused and peer ejections, summed over every
        process's /metrics (read while no copy is frozen)."""
        wanted = ("shop_hedged_calls_total", "shop_retries_refused_total", "shop_peer_ejections_total")
        totals = Counter()
        texts = []
        for name in SERVICES:
            for key in self.mesh.copies_of(name):
                with contextlib.suppress(OSError):
                    texts.append(self.mesh.metrics(key))
        for gateway in getattr(self.mesh, "gateways", [self.mesh.gateway]):
            with contextlib.suppress(OSError):
                texts.append(urllib.request.urlopen(f"{gateway}/metrics", timeout=2).read().decode())
        for text in texts:
            for line in text.splitlines():
                series, _, value = line.rpartition(" ")
                metric = series.partition("{")[0]
                if metric in wanted:
                    totals[metric.removeprefix("shop_").removesuffix("_total")] += float(value)
        return totals

    def freeze_one_copy(self):
        for name in ("inventory", "user", "order"):
            phase = f"one {name} copy frozen"
            self.phase(phase, 1)
            key = f"{name}#1"
            before = self.resilience_counters()
            self.mesh.freeze(key)
            time.sleep(6)
            self.mesh.thaw(key)
            time.sleep(2)
            during = self.resilience_counters()
            during.subtract(before)
            times = sorted(self.load.latencies[phase])
            p99 = times[int(len(times) * 0.99) - 1] if times else 0.0
            slowest = ", ".join(f"{what} {took * 1000:.0f} ms" for took, what in self.load.slowest[phase])
            self.note(f"{key} SIGSTOPped for 6 s, then SIGCONT; p99 of the requests meanwhile "
                      f"{p99 * 1000:.0f} ms (slowest: {slowest}); meanwhile "
                      + ", ".join(f"{what.replace('_', ' ')} {n:.0f}" for what, n in sorted(during.items())))
            if p99 >= 1.0:
                self.violations.append(f"{phase}: p99 {p99:.2f} s, not under 1 s")
            self._expect_no_failures(phase)

    def rolling_restart_copies(self):
        phase = "rolling restart of every copy"
        self.phase(phase, 1)
        for name in ("user", "inventory", "order", "gateway"):
            for key in self.mesh.copies_of(name):
                started = time.monotonic()
                code = self.mesh.stop(key)
                self.mesh.start(key)
                self.note(f"{key}: SIGTERM → exit {code}, SERVING again after "
                          f"{time.monotonic() - started:.1f} s")
                if code != 0:
                    self.violations.append(f"{key} exited {code} on SIGTERM")
                time.sleep(1)
        self._expect_no_failures(phase, first_try=False)

    def redis_outage(self):
        phase = "redis stopped for 10 s"
        # A token revoked before the outage must stay refused through it.
        user_id, token = self.load.customers[0]
        email = f"revoked-{uuid.uuid4().hex[:8]}@example.com"
        password = "correct horse battery"
        http("POST", self.mesh.gateway + "/v1/users", {"email": email, "password": password})
        revoked = http("POST", self.mesh.gateway + "/v1/auth:login",
                       {"email": email, "password": password})[1]["accessToken"]
        status, _ = http("POST", self.mesh.gateway + "/v1/auth:logout", {}, bearer(revoked))
        if status != 204:
            self.violations.append(f"{phase}: logout answered {status}")
        time.sleep(1)
        self.phase(phase)
        self.mesh.pause_redis()
        try:
            time.sleep(2)
            answers = {gw: http("GET", gw + "/v1/orders", None, bearer(revoked))[0]
                       for gw in self.mesh.gateways}
            time.sleep(8)
        finally:
            self.mesh.resume_redis()
        self.note(f"Redis SIGSTOPped for 10 s; a token revoked before the outage was answered "
                  f"{sorted(set(answers.values()))} by the gateways during it")
        if set(answers.values()) != {401}:
            self.violations.append(f"{phase}: a token revoked before the outage was answered {answers}")
        time.sleep(1)
        self._expect_no_failures(phase)

    def soak(self):
        self.phase(f"soak ({SOAK_SECS} s)", 0)
        samples = []
        end = time.monotonic() + SOAK_SECS
        while time.monotonic() < end:
            samples.append(({n: self.mesh.rss_mib(n) for n in self.mesh.pids()},
                            sum(self.mesh.backlog().values())))
            time.sleep(5)
        first, last = samples[1] if len(samples) > 2 else samples[0], samples[-1]
        growth = {n: last[0][n] - first[0][n] for n in first[0]}
        self.note("resident MiB first → last: " + ", ".join(
            f"{n} {first[0][n]:.0f} → {last[0][n]:.0f}" for n in first[0])
            + f"; outbox backlog samples {[b for _, b in samples]}")
        grown = [n for n, g in growth.items() if g > max(16.0, first[0][n] * 0.5)]
        if grown:
            self.violations.append(f"memory grew during the soak: {grown}")
        if samples[-1][1] > max(50, samples[0][1] * 2):
            self.violations.append(f"outbox backlog grew during the soak: {[b for _, b in samples]}")

    def wait(self, what, check, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.5)
        self.violations.append(f"{what}: not within {timeout} s")
        return False


# --- hostile input ------------------------------------------------------------------

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(key, claims, alg="EdDSA"):
    """A token over `claims`, signed by `key` (PEM bytes or a key), or unsigned for alg none."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    if alg == "none":
        return f"{header}.{body}."
    if isinstance(key, bytes):
        # The service writes PKCS#8 v2 (the public key included), which this parser
        # refuses; the 32-byte seed follows the OCTET STRING header 04 20.
        der = base64.b64decode(b"".join(key.strip().splitlines()[1:-1]))
        seed_at = der.index(b"\x04\x22\x04\x20") + 4
        key = Ed25519PrivateKey.from_private_bytes(der[seed_at:seed_at + 32])
    return f"{header}.{body}.{b64url(key.sign(f'{header}.{body}'.encode()))}"


def grpc_raw(port, method, message, pki=None):
    """Sends one gRPC frame with the given bytes (curl: h2c, or mutual TLS with the
    client bundle in `pki`) and returns grpc-status and -message."""
    frame = b"\x00" + len(message).to_bytes(4, "big") + message
    if pki:
        transport = ["--cacert", str(pki / "ca.pem"), "--cert", str(pki / "you.crt"),
                     "--key", str(pki / "you.key")]
        url = f"https://127.0.0.1:{port}/{method}"
    else:
        transport, url = ["--http2-prior-knowledge"], f"http://127.0.0.1:{port}/{method}"
    with tempfile.NamedTemporaryFile() as body:
        body.write(frame)
        body.flush()
        out = subprocess.run(
            ["curl", "-s", "--http2", *transport, "-o", "/dev/null", "-D", "-", "-X", "POST",
             "-H", "content-type: application/grpc", "-H", "te: trailers",
             "--data-binary", f"@{body.name}", url],
            capture_output=True, text=True, timeout=10).stdout
    headers = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = urllib.parse.unquote(v.strip())
    return int(headers.get("grpc-status", "-1")), headers.get("grpc-message", "")


def stored_state(mesh):
    """Everything hostile input must leave as it was."""
    return {
        "users": mesh.sql("user", "SELECT user_id, email, role FROM users ORDER BY user_id"),
        "products": mesh.sql("inventory",
                         "SELECT sku, name, available, reserved, sold, adjusted FROM products ORDER BY sku"),
        "orders": mesh.sql("order", "SELECT order_id, status FROM orders ORDER BY order_id"),
    }


def hostile_input(mesh, customers, admin_token, order_of_first):
    """Every case must get a 4xx (or a gRPC client-error code) naming the problem,
    never a 5xx, and the stored data must not change."""
    gw = mesh.gateway
    key = mesh.auth_key()
    now = int(time.time())
    victim_id, victim_token = customers[0]
    other_id, other_token = customers[1]
    claims = lambda **kw: {"iss": "shopmesh-user-service", "aud": "shopmesh", "sub": other_id,
                           "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex,
                           "role": "customer", **kw}
    header, body, _sig = other_token.split(".")
    forged_body = b64url(json.dumps(claims(role="admin")).encode())
    cases = [
        # tokens
        ("alg none", "GET", "/v1/users", {"authorization": "Bearer " + jwt(key, claims(role="admin"), "none")}, None),
        ("forged claims (role admin, old signature)", "GET", "/v1/users",
         {"authorization": f"Bearer {header}.{forged_body}.{_sig}"}, None),
        ("signed by another key", "GET", "/v1/users",
         {"authorization": "Bearer " + jwt(Ed25519PrivateKey.generate(), claims(role="admin"))}, None),
        ("expired token", "GET", f"/v1/users/{other_id}",
         {"authorization": "Bearer " + jwt(key, claims(iat=now - 7200, exp=now - 3600))}, None),
        ("wrong audience", "GET", f"/v1/users/{other_id}",
         {"authorization": "Bearer " + jwt(key, claims(aud="someone-else"))}, None),
        ("wrong issuer", "GET", f"/v1/users/{other_id}",
         {"authorization": "Bearer " + jwt(key, claims(iss="evil"))}, None),
        ("not a token at all", "GET", f"/v1/users/{other_id}", {"authorization": "Bearer not-a-token"}, None),
        ("no token on a private route", "POST", "/v1/orders", {}, {"lines": [{"sku": "CHAOS-A", "quantity": 1}]}),
        # authorisation
        ("customer reads another's order", "GET", f"/v1/orders/{order_of_first}", bearer(other_token), None),
        ("customer cancels another's order", "POST", f"/v1/orders/{order_of_first}:cancel",
         bearer(other_token), {"reason": "mine now"}),
        ("customer reads another user", "GET", f"/v1/users/{victim_id}", bearer(other_token), None),
        ("customer creates a product", "POST", "/v1/products", bearer(other_token),
         {"sku": "EVIL-1", "name": "x", "unitPrice": {"currencyCode": "EUR", "amountMinor": "1"},
          "initialStock": "1"}),
        ("customer adjusts stock", "POST", "/v1/products/CHAOS-A:adjustStock", bearer(other_token),
         {"delta": "-1000", "reason": "x", "requestId": "evil"}),
        # injection strings
        ("SQL in a SKU path", "GET", "/v1/products/CHAOS-A'%20OR%20'1'='1", {}, None),
        ("SQL in an email", "POST", "/v1/users", {}, {"email": "' OR '1'='1'; DROP TABLE users;--",
                                                      "password": "correct horse battery"}),
        ("SQL in an order line", "POST", "/v1/orders", bearer(other_token),
         {"lines": [{"sku": "CHAOS-A'; DROP TABLE orders;--", "quantity": 1}]}),
        ("script in a cancel reason, unknown order", "POST", f"/v1/orders/{uuid.uuid4()}:cancel",
         bearer(other_token), {"reason": "<script>alert(1)</script>"}),
        ("path traversal", "GET", "/v1/products/..%2F..%2Fetc%2Fpasswd", {}, None),
        ("control characters in a product name", "POST", "/v1/products", bearer(admin_token),
         {"sku": "EVIL-2", "name": "a\u0000b", "unitPrice": {"currencyCode": "EUR", "amountMinor": "1"},
          "initialStock": "1"}),
        # malformed bodies
        ("deeply nested JSON", "POST", "/v1/orders", bearer(other_token), "RAW:" + "[" * 100000 + "]" * 100000),
        ("huge JSON body", "POST", "/v1/orders", bearer(other_token),
         "RAW:" + json.dumps({"lines": [{"sku": "CHAOS-A", "quantity": 1}] * 60000})),
        ("truncated JSON", "POST", "/v1/orders", bearer(other_token), "RAW:{\"lines\":[{\"sku\":"),
        ("invalid UTF-8 in JSON", "POST", "/v1/users", {}, b"RAW:" + b'{"email":"\xff\xfe@x.com","password":"correct horse battery"}'),
        ("wrong type", "POST", "/v1/orders", bearer(other_token), {"lines": [{"sku": "CHAOS-A", "quantity": "two"}]}),
        ("unknown field", "POST", "/v1/orders", bearer(other_token), {"lines": [], "discount": 100}),
        ("negative quantity", "POST", "/v1/orders", bearer(other_token), {"lines": [{"sku": "CHAOS-A", "quantity": -5}]}),
        ("int64 overflow", "POST", "/v1/orders", bearer(other_token),
         {"lines": [{"sku": "CHAOS-A", "quantity": "99999999999999999999999"}]}),
        ("unknown order id", "GET", f"/v1/orders/{uuid.uuid4()}", bearer(other_token), None),
        ("malformed order id", "GET", "/v1/orders/not-a-uuid", bearer(other_token), None),
    ]
    before = stored_state(mesh)
    results = []
    for name, method, path, headers, payload in cases:
        raw = None
        if isinstance(payload, str) and payload.startswith("RAW:"):
            raw, payload = payload[4:].encode(), None
        elif isinstance(payload, bytes) and payload.startswith(b"RAW:"):
            raw, payload = payload[4:], None
        status, reply = http(method, gw + path, payload, headers, raw=raw)
        message = reply.get("message") or reply.get("raw") or ""
        ok = 400 <= status < 500 and bool(message)
        results.append((name, f"HTTP {status}", message[:110], ok))

    # gRPC straight to the services: bytes that are not the message they claim to be.
    grpc_cases = [
        ("truncated protobuf", mesh.ports["user"], rpc("user", "UserService", "Login"),
         b"\x0a\x10ada@example"),
        ("invalid UTF-8 in a protobuf string", mesh.ports["user"],
         rpc("user", "UserService", "Login"), b"\x0a\x04\xff\xfe\xfd\xfc\x12\x03abc"),
        ("wrong wire type", mesh.ports["inventory"],
         rpc("inventory", "InventoryService", "GetProduct"), b"\x0d\x01\x02\x03\x04"),
        ("length past the end", mesh.ports["order"], rpc("order", "OrderService", "GetOrder"),
         b"\x0a\xff\xff\xff\x0f"),
    ]
    client_errors = {3, 5, 7, 9, 11, 16}   # INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...
    for name, port, method, message in grpc_cases:
        code, text = grpc_raw(port, method, message, getattr(mesh, "pki", None))
        results.append((name, f"gRPC {code}", text[:110], code in client_errors and bool(text)))

    # A flood above the rate limit, on a gateway of its own with low limits.
    with mesh.flood_gateway(per_sec=20, burst=20) as flood:
        statuses = Counter(http("GET", f"{flood}/v1/products/CHAOS-A")[0] for _ in range(150))
    results.append(("flood above the rate limit (150 requests, burst 20)",
                    ", ".join(f"{s}×{n}" for s, n in sorted(statuses.items())),
                    "429 with Retry-After once the bucket is empty",
                    statuses.get(429, 0) > 0 and all(s in (200, 429) for s in statuses)))

    victim_order = next(iter(mesh.sql(
        "order", f"SELECT order_id FROM orders WHERE status = 'confirmed' AND user_id = '{victim_id}' LIMIT 1")),
        [None])[0]
    results.extend(hostile_clients(mesh, victim_token, victim_order))

    after = stored_state(mesh)
    unchanged = before == after
    results.extend(sign_in_attacks(mesh))

    # Free text is data: an injection string in a display name is stored verbatim
    # (bound parameters) and read back unchanged, after the comparison above.
    name = "Robert'); DROP TABLE users;-- <script>alert(1)</script>"
    email = f"bobby-{uuid.uuid4().hex[:6]}@example.com"
    status, reply = http("POST", gw + "/v1/users", {"email": email, "password": "correct horse battery",
                                                    "displayName": name})
    stored = reply.get("user", {}).get("displayName")
    results.append(("injection string in a display name (valid input)", f"HTTP {status}",
                    "stored and returned verbatim" if stored == name else f"returned {stored!r}",
                    status == 201 and stored == name))
    return results, unchanged


# --- the invariant checker --------------------------------------------------------

def check_invariants(mesh, load):
    """The invariants of docs/design.md §5, as tests/chaos/src/lib.rs defines them:
    this gathers what the checker reads (its queries, run with psql on each service's
    database, and every topic) and runs `check-invariants` on it."""
    checker = ["cargo", "run", "--quiet", "-p", "shop-chaos", "--bin", "check-invariants", "--"]
    queries = json.loads(subprocess.run(checker + ["queries"], cwd=ROOT, check=True,
                                        capture_output=True, text=True).stdout)
    rows = {q["part"]: {service: mesh.sql(service, q["sql"]) for service in q["services"]}
            for q in queries}
    raw = mesh.read_topics([f"{name}-service" for name in ("inventory", "user")])
    topics = {
        "records": [{"topic": t, "partition": p, "offset": o, "key": k or "",
                     "event_id": h.get("ce_id", ""), "event_type": h.get("ce_type", "")}
                    for t, p, o, k, h in raw["records"]],
        "dead_letters": [{"topic": t, "key": k or "", "event_type": h.get("ce_type", ""),
                          "source_offset": str(h.get("dlq_source_offset", "")),
                          "error": h.get("dlq_error", "")}
                         for t, _, _, k, h in raw["dead_letters"]],
        "groups": raw["groups"],
    }
    snapshot = {"rows": rows, "topics": topics, "client_confirmed": sorted(load.confirmed),
                "tracked_skus": SKUS}
    report = json.loads(subprocess.run(checker, cwd=ROOT, check=True, capture_output=True,
                                       text=True, input=json.dumps(snapshot)).stdout)
    if len(report["checked"]) != 8:
        report["violations"].append(f"only {report['checked']} were checked")
    return report["facts"], report["violations"]


def settle(mesh, timeout=120):
    """Nothing pending, held or unsent, and no consumer lag on two readings more than
    one lag-report period (5 s) apart."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        pending = int(mesh.sql("order", mesh.pending_sql)[0][0])
        held = int(mesh.sql("inventory", "SELECT count(*) FROM reservations WHERE status = 'held'")[0][0])
        if pending == 0 and held == 0 and sum(mesh.backlog().values()) == 0:
            lag = 0
            copies = getattr(mesh, "copies_of", lambda name: [name])
            for key in (k for name in ("inventory", "user") for k in copies(name)):
                metrics = mesh.metrics(key)
                lag += sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                           if line.startswith("shop_consumer_lag_messages"))
            if lag == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 6:
                    return True
            else:
                quiet_since = None
        else:
            quiet_since = None
        time.sleep(1)
    return False


# --- report -------------------------------------------------------------------------

REPORT_HEAD = """# Reliability

Written by `make chaos` (tests/chaos/run.py): the same load and invariant checker run against
the native mesh, the native mesh with two copies of every process (`make chaos-replicas`, its own
scenarios: one copy killed, frozen or restarted while the other carries the load, Redis stopped),
and docker-compose.yml's containers, with one copy of each and with two (`make
chaos-compose-replicas`). Each run rewrites its own section below and keeps the others'.
"""
TITLES = {"native": "Native mesh (`make chaos-native`)",
          "native-replicas": "Native mesh, two copies of everything (`make chaos-replicas`)",
          "compose": "Compose mesh (`make chaos-compose`)",
          "compose-replicas": "Compose mesh, two copies of everything (`make chaos-compose-replicas`)"}


def write_report(mesh, chaos, load, facts, violations, hostile, unchanged, elapsed):
    """This run's section of docs/reliability.md; the other form's section is kept."""
    confirmed_seen = len(load.confirmed)
    restart = "rolling restart of every copy" if REPLICAS > 1 else "rolling restart"
    lines = [
        f"<!-- chaos run: {mesh.target} -->",
        f"## {TITLES[mesh.target]}",
        "",
        f"Run on {datetime.date.today().isoformat()}, seed {SEED}, {WORKERS} client threads, "
        f"{elapsed / 60:.1f} minutes. {mesh.describe} Traffic went through the gateway the "
        "whole time: 60 % CreateOrder (1–2 lines), 15 % GetOrder, 15 % ListProducts, 10 % CancelOrder. "
        "Writes carry an Idempotency-Key; a client retries a connection error or 502/503/504 with the "
        "same key for up to 10 s, and a request counts as failed only when it still fails after that.",
        "",
        "### Summary",
        "",
        "| figure | value |",
        "|---|---|",
        f"| scenarios run | {len(chaos.phases) - 1}"
        f"{' (and the hostile-input suite)' if hostile else ''} |",
        f"| requests sent | {sum(load.sent.values())} |",
        f"| orders confirmed (seen by clients / stored) | {confirmed_seen} / {facts.get('confirmed', 0)} |",
        f"| orders cancelled by clients | {len(load.cancelled)} |",
        f"| events checked on the topics | {facts.get('events', 0)} "
        f"({facts.get('duplicate deliveries', 0)} redelivered copies, absorbed by the consumers' inboxes) |",
        f"| invariant violations | **{len(violations)}** |",
        f"| failed requests during the rolling restart | **{load.failed[restart]}** "
        f"of {load.sent[restart]} |",
        f"| hostile inputs answered as they should (a 4xx or gRPC client error naming the problem; "
        f"valid free text stored verbatim) | "
        + (f"{sum(1 for r in hostile if r[3])} of {len(hostile)}; stored data unchanged: "
           f"{'yes' if unchanged else '**no**'} |" if hostile else
           "not run here: `make chaos-native` sends them to one copy of each process |"),
        "",
        "### Scenarios",
        "",
        "| scenario | requests | failed at the first attempt | failed (after retries) | what happened |",
        "|---|---|---|---|---|",
    ]
    by_phase = defaultdict(list)
    for phase, what in chaos.notes:
        by_phase[phase].append(what)
    for phase in chaos.phases:
        lines.append(f"| {phase} | {load.sent[phase]} | {load.first_try_failed[phase]} | {load.failed[phase]} | "
                     f"{'; '.join(by_phase.get(phase, [])) or '—'} |")
    absorbed = (
        "With two copies of everything, every fault a service copy suffers (killed, frozen, "
        "restarted) and a Redis outage must be absorbed by the mesh itself (ejection, retries and "
        "hedges within their budget): the run fails on any request that failed even at its first "
        "attempt there. A gateway copy that dies or restarts drops the connections its clients had "
        "to it; those clients try the other gateway, as they would behind a load balancer, so "
        "those first attempts are counted but not failures. " if REPLICAS > 1 else
        "Failed requests outside the rolling restart are expected: a SIGKILLed or partitioned "
        "service cannot answer. ")
    lines += [
        "",
        absorbed + "What must hold is that nothing a client was told is lost and "
        "every effect happens once; the checker below reads every database and topic for that.",
        "",
        "### Invariants (docs/design.md §5, checked by tests/chaos/src/lib.rs), after everything settled",
        "",
        "- every order a client saw confirmed exists, confirmed (or cancelled later by its client);",
        f"- every confirmed order has exactly one OrderConfirmed event id on `{ORDER_EVENTS_TOPIC}`, "
        "and no other order has one;",
        "- every event on a topic has its outbox row (nothing published for a rolled-back write), and "
        "every outbox row reached its topic;",
        "- each consumer's inbox holds every order event id exactly once;",
        "- per SKU, initial + adjustments = available + reserved + sold, nothing negative; adjusted, "
        "reserved and sold equal what adjustments, held and committed reservations say; sold equals "
        "the lines of confirmed orders and nothing stays reserved;",
        "- each user's figures equal their confirmed, not cancelled, orders;",
        "- no order left pending, no outbox backlog, no consumer lag.",
        "",
    ]
    lines += [f"**Violations: {len(violations)}**" + (":" if violations else ".")]
    lines += [f"- {v}" for v in violations]
    if hostile:
        lines += ["", "### Hostile input", "",
                  "Sent while the load was paused; the stored users, products and orders were "
                  "compared before and after.", "",
                  "| input | answer | message | ok |", "|---|---|---|---|"]
    for name, answer, message, ok in hostile:
        message = message.replace("|", "\\\\|").replace("\n", " ")
        lines.append(f"| {name} | {answer} | {message} | {'yes' if ok else '**no**'} |")
    sections = {}
    if REPORT.exists():
        for target, body in re.findall(r"<!-- chaos run: ([\w-]+) -->\n(.*?)(?=<!-- chaos run: |\Z)",
                                       REPORT.read_text(), re.S):
            sections[target] = f"<!-- chaos run: {target} -->\n{body.rstrip()}\n"
    sections[mesh.target] = "\n".join(lines) + "\n"
    REPORT.write_text(REPORT_HEAD + "".join(
        "\n" + sections[t] for t in TITLES if t in sections))


def main():
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="shopmesh-chaos."))
    mesh = ComposeMesh(work) if sys.argv[1:] == ["--compose"] else NativeMesh(work)
    chaos = load = None
    try:
        log(f"{mesh.target} mesh up: {mesh.start_all()}")
        admin = http("POST", mesh.gateway + "/v1/auth:login",
                     {"email": mesh.admin[0], "password": mesh.admin[1]})[1]["accessToken"]
        for sku in SKUS:
            http("POST", mesh.gateway + "/v1/products", {
                "sku": sku, "name": f"Chaos {sku}", "initialStock": str(STOCK),
                "unitPrice": {"currencyCode": "EUR", "amountMinor": "500"}}, bearer(admin))
        customers = []
        for i in range(8):
            email, password = f"chaos-{i}-{uuid.uuid4().hex[:6]}@example.com", "correct horse battery"
            http("POST", mesh.gateway + "/v1/users", {"email": email, "password": password})
            login = http("POST", mesh.gateway + "/v1/auth:login", {"email": email, "password": password})[1]
            customers.append((login["user"]["userId"], login["accessToken"]))

        load = Load(mesh, customers)
        chaos = Chaos(mesh, load)
        load.start()
        chaos.phase("steady load", 5)
        for scenario in SCENARIOS:
            getattr(chaos, scenario)()

        if REPLICAS > 1:
            # The hostile-input suite runs against one copy (chaos-native): its limits
            # per process (watches per user, the sign-in throttle) are per copy here.
            hostile, unchanged = [], True
        else:
            log("hostile input (load paused)")
            load.phase = "hostile input"
            load.paused.set()
            # Calls still retrying must land before the snapshot the suite compares with.
            for _ in range(2):
                while load.in_flight:
                    time.sleep(0.1)
                time.sleep(0.5)
            # Consumers still working through a backlog would change stock under the comparison.
            if not settle(mesh):
                chaos.violations.append("the mesh did not settle before the hostile input")
            first_order = next((o for o, u in load.confirmed.items() if u == customers[0][0]), None)
            if first_order is None:
                status, reply = http("POST", mesh.gateway + "/v1/orders",
                                     {"lines": [{"sku": "CHAOS-A", "quantity": 1}]}, bearer(customers[0][1]))
                first_order = reply["order"]["orderId"]
            hostile, unchanged = hostile_input(mesh, customers, admin, first_order)
            bad = [r for r in hostile if not r[3]]
            for name, answer, message, _ in bad:
                chaos.violations.append(f"hostile input '{name}': {answer} {message}")
            if not unchanged:
                chaos.violations.append("hostile input changed stored data")
        load.stop()

        log("settling, then checking the invariants")
        if not settle(mesh):
            chaos.violations.append("the mesh did not settle within 120 s")
        facts, violations = check_invariants(mesh, load)
        violations = chaos.violations + violations
        write_report(mesh, chaos, load, facts, violations, hostile, unchanged, time.monotonic() - started)
        log(f"scenarios: {len(chaos.phases) - 1}; requests sent: {sum(load.sent.values())}; "
            f"orders confirmed: {facts['confirmed']}; events checked: {facts['events']}; "
            f"violations: {len(violations)}; failed requests during the rolling restart: "
            f"{load.failed['rolling restart']}")
        for v in violations:
            log(f"VIOLATION: {v}")
        log(f"report written to docs/reliability.md ({mesh.target} section)")
        return 1 if violations or load.failed["rolling restart"] else 0
    finally:
        if load:
            load.running = False
        mesh.close()


if __name__ == "__main__":
    sys.exit(main())
