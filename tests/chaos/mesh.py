"""The mesh that `make chaos` acts on, in its two forms.

NativeMesh   the services and the gateway as child processes from target/<profile>,
             against scripts/with-infra.sh's PostgreSQL and tansu; the order service
             reaches inventory through a TCP proxy that can slow or cut the link.
ComposeMesh  docker-compose.yml's containers, brought up by `scripts/compose-test.sh
             chaos`; faults are the engine's own: SIGKILL of a container's process,
             `docker pause`, `docker network disconnect`, `docker stop` / `start`.
             With CHAOS_REPLICAS=2 the services run as two containers each
             (`--scale`) and a second gateway container stands beside compose's.

Both offer the same operations, so the scenarios and the checker in chaos.py read
the same whichever form runs.
"""

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("user", "inventory", "order")
NAMES = SERVICES + ("gateway",)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(url, sql):
    out = subprocess.run(["psql", url, "-qtAX", "-F", "\t", "-c", sql], capture_output=True,
                         text=True, check=True).stdout
    return rows(out)


def rows(out):
    return [line.split("\t") for line in out.splitlines() if line]


def db_url(server, name):
    parts = urllib.parse.urlsplit(server)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def http(method, url, body=None, headers=None, timeout=15, raw=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
            return response.status, (json.loads(text) if text else {})
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text) if text else {}
        except ValueError:
            return err.code, {"raw": text[:200].decode(errors="replace")}
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        return 0, {"error": str(err)}


def http_status(url):
    return http("GET", url, timeout=2)[0]


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"{what}: not within {timeout} s")


class Mesh:
    """What both forms share: health through the published ports, memory and backlog."""

    gateway = ports = admin_ports = None
    # The client bundle for mutual-TLS gRPC ports (compose); None where they are plaintext.
    pki = None
    pending_sql = "SELECT count(*) FROM orders WHERE status = 'pending'"

    def healthy(self, name):
        if name.partition("#")[0] == "gateway":
            # Ready means the gateway serves; its backends' health is in the body.
            url = f"http://127.0.0.1:{self.ports[name]}" if "#" in name else self.gateway
            try:
                status, report = http("GET", f"{url}/readyz", timeout=2)
            except OSError:
                return False
            return status == 200 and set(report.get("backends", {}).values()) == {"SERVING"}
        transport = (["-cacert", str(self.pki / "ca.pem"), "-cert", str(self.pki / "you.crt"),
                      "-key", str(self.pki / "you.key")] if self.pki else ["-plaintext"])
        done = subprocess.run(["grpcurl", *transport, "-max-time", "1",
                               f"127.0.0.1:{self.ports[name]}", "grpc.health.v1.Health/Check"],
                              capture_output=True, text=True)
        return '"SERVING"' in done.stdout

    def wait_serving(self, name, timeout=60):
        wait_for(f"{name} SERVING", lambda: self.healthy(name), timeout)

    def rss_mib(self, name):
        try:
            for line in Path(f"/proc/{self.pids()[name]}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except (OSError, KeyError):
            pass
        return 0.0

    def backlog(self):
        return {name: int(self.sql(name, "SELECT count(*) FROM outbox_events WHERE published_at IS NULL")[0][0])
                for name in SERVICES}

    def metrics(self, name):
        return urllib.request.urlopen(f"http://127.0.0.1:{self.admin_ports[name]}/metrics",
                                      timeout=5).read().decode()


# --- native: child processes ------------------------------------------------------

class Proxy:
    """Forwards a port to another; can add latency to every chunk or drop everything."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.delay = 0.0
        self.partitioned = False
        self.conns = []
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            client, _ = self.listener.accept()
            if self.partitioned:
                # A partition: the connection is accepted and then nothing ever answers.
                with self.lock:
                    self.conns.append(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while self.partitioned:
                    time.sleep(0.05)
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def heal(self):
        self.delay, self.partitioned = 0.0, False
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.close()
            except OSError:
                pass


class NativeMesh(Mesh):
    target = "native"
    slow_phase = "inventory slow (3 s per hop)"
    # Every process keeps its loopback address.
    can_move = False
    partition_phase = "inventory partitioned"
    admin = ("admin@chaos.test", "chaos-admin-password")

    def __init__(self, work):
        # CHAOS_REPLICAS=N runs N copies of every process: copy k of `user` is the
        # key `user#k` (copy 0 is plain `user`), each on ports of its own, and every
        # caller names all copies of a peer in one comma-separated address.
        self.copies = int(os.environ.get("CHAOS_REPLICAS", "1"))
        if self.copies > 1:
            self.target = "native-replicas"
        profile = os.environ.get("SHOPMESH_BUILD_PROFILE", "debug")
        self.bin = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / profile
        self.work = work
        self.server = os.environ["DATABASE_URL"]
        self.brokers = os.environ["KAFKA_BROKERS"]
        self.keys = work / "keys"
        subprocess.run([self.bin / "user-service", "generate-keys", self.keys], check=True,
                       capture_output=True)
        self.dbs = {}
        for name in SERVICES:
            db = f"chaos_{name}"
            psql(self.server, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            psql(self.server, f"CREATE DATABASE {db}")
            self.dbs[name] = db_url(self.server, db)
        taken = set()

        def distinct_port():
            # The kernel may hand out a port it handed out before: never the same twice here.
            while (port := free_port()) in taken:
                pass
            taken.add(port)
            return port
        self.ports = {key: distinct_port() for name in NAMES for key in self.copies_of(name)}
        self.admin_ports = {key: distinct_port() for name in SERVICES for key in self.copies_of(name)}
        self.proxy = Proxy(self.ports["inventory"])
        self.procs = {}
        self.gateways = [f"http://127.0.0.1:{self.ports[key]}" for key in self.copies_of("gateway")]
        self.gateway = self.gateways[0]
        self.redis_pid = int(os.environ.get("SHOPMESH_REDIS_PID") or 0)
        self.broker_pid = int(os.environ["SHOPMESH_BROKER_PID"])
        self.pgdata = os.environ.get("SHOPMESH_PGDATA")
        self.can_restart_postgres = bool(self.pgdata)
        self.describe = (
            f"The mesh ran from `target/{profile}` against this run's own PostgreSQL and tansu "
            "broker (scripts/with-infra.sh); the order service reached inventory through a TCP "
            "proxy that added latency or cut the link.")
        if self.copies > 1:
            self.describe = (
                f"The mesh ran from `target/{profile}` against this run's own PostgreSQL, tansu "
                f"broker and Redis (scripts/with-infra.sh), {self.copies} copies of every service "
                "and of the gateway; every caller named all copies of a peer and balanced over "
                "them, and the client spread its requests over the gateways.")

    def copies_of(self, name):
        """The keys of every copy of `name`: `name`, then `name#1`, …"""
        return [name] + [f"{name}#{k}" for k in range(1, self.copies)]

    def addresses(self, name):
        return ",".join(f"http://127.0.0.1:{self.ports[key]}" for key in self.copies_of(name))

    def env(self, proc):
        name = proc.partition("#")[0]
        key = lambda f: (self.keys / f).read_text()
        env = {
            "PATH": os.environ["PATH"], "RUST_LOG": os.environ.get("CHAOS_RUST_LOG", "warn"),
            "BIND_HOST": "127.0.0.1",
            "KAFKA_BROKERS": self.brokers,
            # Every verifier but the user service fetches the keys it publishes.
            "AUTH_KEYS_ADDR": "" if name == "user" else self.addresses("user"),
            "SERVICE_PUBLIC_KEY": key("service.pub"),
            "DRAIN_DELAY_MS": "300",
            "KAFKA_ONE_RECORD_PER_BATCH": os.environ.get("KAFKA_ONE_RECORD_PER_BATCH", "false"),
            # Revoked tokens and the gateways' limits, shared by every copy.
            "REDIS_URL": os.environ.get("REDIS_URL", ""),
        }
        if name == "gateway":
            env.update(HTTP_PORT=str(self.ports[proc]),
                       USER_SERVICE_ADDR=self.addresses("user"),
                       INVENTORY_SERVICE_ADDR=self.addresses("inventory"),
                       ORDER_SERVICE_ADDR=self.addresses("order"),
                       # The load comes from one address; the flood test has its own limits.
                       RATE_LIMIT_PER_SEC="5000", RATE_LIMIT_BURST="5000")
            return env
        env.update(DATABASE_URL=self.dbs[name], GRPC_PORT=str(self.ports[proc]),
                   ADMIN_PORT=str(self.admin_ports[proc]),
                   # Its own event key; user and inventory apply only the order service's events.
                   EVENT_SIGNING_KEY=key(f"events-{name}.key"))
        if name in ("user", "inventory"):
            env.update(EVENT_PUBLIC_KEYS=key("events-order.pub"))
        if name == "user":
            env.update(AUTH_PRIVATE_KEY=key("auth.key"), BOOTSTRAP_ADMIN_EMAIL=self.admin[0],
                       BOOTSTRAP_ADMIN_PASSWORD=self.admin[1],
                       # The gateway's x-forwarded-for names the client for the sign-in throttle.
                       TRUSTED_PROXIES="127.0.0.1")
        if name == "order":
            # Only the order service calls other services with a service token.
            env.update(SERVICE_PRIVATE_KEY=key("service.key"))
            # One copy of inventory sits behind the fault proxy; several are named directly.
            inventory = (f"http://127.0.0.1:{self.proxy.port}" if self.copies == 1
                         else self.addresses("inventory"))
            env.update(INVENTORY_SERVICE_ADDR=inventory,
                       RPC_TIMEOUT_MS="1000", REQUEST_DEADLINE_MS="4000",
                       RECOVERY_AFTER_MS="3000", RECOVERY_INTERVAL_MS="500")
        return env

    def binary(self, key):
        name = key.partition("#")[0]
        return self.bin / ("gateway" if name == "gateway" else f"{name}-service")

    def start_all(self):
        for name in NAMES:
            for key in self.copies_of(name):
                self.start(key)
        return f"gateways {', '.join(self.gateways)}; logs in {self.work}"

    def start(self, key):
        logfile = open(self.work / f"{key}.log", "a")
        self.procs[key] = subprocess.Popen([self.binary(key)], env=self.env(key),
                                           stdout=logfile, stderr=logfile)
        self.wait_serving(key)

    def freeze(self, key):
        self.procs[key].send_signal(signal.SIGSTOP)

    def thaw(self, key):
        self.procs[key].send_signal(signal.SIGCONT)

    def pause_redis(self):
        os.kill(self.redis_pid, signal.SIGSTOP)

    def resume_redis(self):
        os.kill(self.redis_pid, signal.SIGCONT)

    def killer(self, name):
        """A SIGKILL of `name`, ready to fire at once; firing it returns when the
        signal was sent (time.monotonic) once the process is gone."""
        proc = self.procs[name]

        def kill():
            proc.send_signal(signal.SIGKILL)
            sent = time.monotonic()
            proc.wait(timeout=30)
            return sent
        return kill

    def revive(self, name):
        self.start(name)

    def stop(self, name):
        self.procs[name].send_signal(signal.SIGTERM)
        return self.procs[name].wait(timeout=30)

    def pids(self):
        return {n: p.pid for n, p in self.procs.items() if p.poll() is None}

    def sql(self, name, query):
        return psql(self.dbs[name.partition("#")[0]], query)

    def auth_key(self):
        return (self.keys / "auth.key").read_bytes()

    def read_topics(self, groups):
        from topics import read
        return read(self.brokers, groups)

    def pause_broker(self):
        os.kill(self.broker_pid, signal.SIGSTOP)

    def resume_broker(self):
        os.kill(self.broker_pid, signal.SIGCONT)

    def _pg_ctl(self, *args):
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        pg_bin = os.environ["SHOPMESH_PG_BIN"]
        subprocess.run(as_postgres + [f"{pg_bin}/pg_ctl", "-D", self.pgdata, "-w", *args],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=True)

    def stop_postgres(self):
        self._pg_ctl("-m", "fast", "stop")

    def start_postgres(self):
        # Started again with the options it was started with (postmaster.opts),
        # logging to a file so that it holds none of this process's pipes.
        opts = shlex.split(Path(self.pgdata, "postmaster.opts").read_text())[1:]
        while "-D" in opts:
            i = opts.index("-D")
            del opts[i:i + 2]
        self._pg_ctl("-l", f"{self.pgdata}/../postgres.log", "-o", shlex.join(opts), "start")

    def slow_inventory(self):
        self.proxy.delay = 3.0

    def partition_inventory(self):
        self.proxy.partitioned = True

    def heal_inventory(self):
        self.proxy.heal()

    @contextlib.contextmanager
    def flood_gateway(self, per_sec, burst):
        port = free_port()
        env = self.env("gateway")
        env.update(HTTP_PORT=str(port), RATE_LIMIT_PER_SEC=str(per_sec), RATE_LIMIT_BURST=str(burst))
        flood = subprocess.Popen([self.binary("gateway")], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for("the flood gateway ready", lambda: http_status(f"{url}/readyz") == 200, 10)
            yield url
        finally:
            flood.terminate()
            flood.wait(timeout=15)

    def close(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


# --- compose: the containers of docker-compose.yml --------------------------------

def docker(*args, check=True):
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"docker {' '.join(args[:3])} ... failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout.strip()


class ComposeMesh(Mesh):
    """Run by `scripts/compose-test.sh chaos`, which brings the stack up with
    deploy/compose/chaos.yml (the same saga timings and load rate limit as the native
    run) and tears it down afterwards. A service copy is reached at its container's
    address on the compose network (the engine's Linux host routes to it): its
    admin port for /metrics, its gRPC port for grpc.health.v1."""

    target = "compose"
    slow_phase = "inventory frozen (docker pause)"
    partition_phase = "inventory partitioned (docker network disconnect)"
    # Inside every service container: each service's gRPC and admin ports.
    grpc_ports = {"user": 50051, "inventory": 50052, "order": 50053}
    admin_ports = {"user": 9101, "inventory": 9102, "order": 9103}

    def __init__(self, work):
        self.work = work
        # Copy k of `inventory` is the key `inventory#k` (copy 0 is plain
        # `inventory`): the service's k-th container, oldest first.
        self.copies = int(os.environ.get("CHAOS_REPLICAS", "1"))
        if self.copies > 1:
            self.target = "compose-replicas"
        # The keys job's client bundle: the services' gRPC ports speak mutual TLS.
        self.pki = ROOT / ".dev" / "compose-tls"
        self.project = os.environ["SHOPMESH_COMPOSE_PROJECT"]
        self.reader_image = os.environ["READER_IMAGE"]
        self.base_image = os.environ.get("BASE_IMAGE", "")
        port = lambda var, default: int(os.environ.get(var) or default)
        self.ports = {"user": port("USER_GRPC_PORT", 50051), "inventory": port("INVENTORY_GRPC_PORT", 50052),
                      "order": port("ORDER_GRPC_PORT", 50053)}
        self.gateway = f"http://127.0.0.1:{port('GATEWAY_PORT', 8080)}"
        self.gateways = [self.gateway]
        self.admin = (os.environ.get("SHOPMESH_ADMIN_EMAIL") or "admin@shopmesh.dev",
                      os.environ.get("SHOPMESH_ADMIN_PASSWORD") or "dev-admin-password")
        self.can_restart_postgres = True
        # Container ids outlive the faults (restart policy, stop/start, pause,
        # disconnect), so each is looked up once rather than on every call.
        self.containers = {}
        self.network = next(iter(json.loads(docker(
            "inspect", "-f", "{{json .NetworkSettings.Networks}}", self.container("gateway")))))
        self.disconnected = self.paused = False
        self.broker_paused = self.postgres_stopped = False
        self.frozen = set()
        for k in range(1, self.copies):
            self.containers[f"gateway#{k}"], self.ports[f"gateway#{k}"] = self.extra_gateway()
            self.gateways.append(f"http://127.0.0.1:{self.ports[f'gateway#{k}']}")
        self.describe = (
            "The mesh ran as docker-compose.yml's containers (the images deploy/docker/Dockerfile "
            "builds, with deploy/compose/offline.yml's PostgreSQL and tansu stand-ins and "
            "deploy/compose/chaos.yml's settings), brought up by `scripts/compose-test.sh chaos`; "
            "faults were the engine's own: SIGKILL of a container's process (its restart policy "
            "brought it back), `docker pause`, `docker network disconnect`, `docker stop` / `start`.")
        if self.copies > 1:
            self.describe += (
                f" {self.copies} containers of each service (`--scale`) and of the gateway (compose's "
                "and one more from its image and settings); the services' callers balanced over the "
                "copies they found through compose's DNS, and the client spread its requests over "
                "the gateways.")

    def copies_of(self, name):
        """The keys of every copy of `name`: `name`, then `name#1`, …"""
        return [name] + [f"{name}#{k}" for k in range(1, self.copies)]

    def extra_gateway(self, env_changes=None):
        """Another gateway container from compose's gateway's image, settings and key
        volume, on a free host port: (container id, port)."""
        env = json.loads(self.inspect("gateway", "{{json .Config.Env}}"))
        if env_changes:
            env = [e for e in env if e.split("=", 1)[0] not in env_changes]
            env += [f"{k}={v}" for k, v in env_changes.items()]
        port = free_port()
        args = ["run", "-d", "--restart", "unless-stopped", "--network", self.network,
                "--volumes-from", f"{self.container('gateway')}:ro", "-p", f"127.0.0.1:{port}:8080",
                "--label", f"com.docker.compose.project={self.project}"]
        for e in env:
            args += ["-e", e]
        container = docker(*args, self.inspect("gateway", "{{.Config.Image}}"))
        url = f"http://127.0.0.1:{port}"
        wait_for(f"the gateway on port {port} ready", lambda: http_status(f"{url}/readyz") == 200, 60)
        return container, port

    @staticmethod
    def service(name):
        name = name.partition("#")[0]
        return name if name in ("gateway", "postgres", "kafka", "redis") else f"{name}-service"

    def container(self, name):
        if name not in self.containers:
            copy = int(name.partition("#")[2] or 0)
            # Oldest first: copy 0 is the container compose started first.
            ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}",
                         "--filter", f"label=com.docker.compose.service={self.service(name)}").split()[::-1]
            if len(ids) <= copy:
                raise SystemExit(f"no container {copy} of {self.service(name)} in compose project {self.project}")
            self.containers[name] = ids[copy]
        return self.containers[name]

    def healthy(self, name):
        if name.partition("#")[0] == "gateway":
            return super().healthy(name)
        # This very container, over mutual TLS (its certificate names localhost).
        address = self.address(self.container(name))
        if not address or address.startswith("<"):
            return False
        port = self.grpc_ports[name.partition("#")[0]]
        done = subprocess.run(["grpcurl", "-cacert", str(self.pki / "ca.pem"), "-cert", str(self.pki / "you.crt"),
                               "-key", str(self.pki / "you.key"), "-servername", "localhost", "-max-time", "1",
                               f"{address}:{port}", "grpc.health.v1.Health/Check"],
                              capture_output=True, text=True)
        return '"SERVING"' in done.stdout

    def metrics(self, name):
        address = self.address(self.container(name))
        port = self.admin_ports[name.partition("#")[0]]
        return urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=5).read().decode()

    def freeze(self, key):
        docker("pause", self.container(key))
        self.frozen.add(key)

    def thaw(self, key):
        docker("unpause", self.container(key))
        self.frozen.discard(key)

    def pause_redis(self):
        self.freeze("redis")

    def resume_redis(self):
        self.thaw("redis")

    def inspect(self, name, template):
        return docker("inspect", "-f", template, self.container(name))

    def start_all(self):
        for name in NAMES:
            for key in self.copies_of(name):
                self.wait_serving(key)
        return f"gateway {self.gateway}; compose project {self.project} on network {self.network}"

    def killer(self, name):
        """A SIGKILL of `name`'s process, ready to fire at once (what it needs from the
        engine is looked up now); firing it returns when the signal was sent
        (time.monotonic) once the process is gone. Sent from the host as a crash would be: `docker
        kill` counts as a deliberate stop and would not exercise the restart policy."""
        self.restarts_before = int(self.inspect(name, "{{.RestartCount}}"))
        pid = int(self.inspect(name, "{{.State.Pid}}"))

        def kill():
            try:
                os.kill(pid, signal.SIGKILL)
            except (PermissionError, ProcessLookupError):
                # Not root, or the engine's process ids are not this host's.
                docker("run", "--rm", "--pid=host", self.base_image, "sh", "-c",
                       'kill -KILL "$0"', str(pid))
            sent = time.monotonic()
            wait_for(f"{name}'s process gone",
                     lambda: self.inspect(name, "{{.State.Pid}}") != str(pid), 30)
            return sent
        return kill

    def revive(self, name):
        """Waits for the restart policy to bring the container back, healthy."""
        wait_for(f"{name} restarted by its restart policy", lambda: int(
            self.inspect(name, "{{.RestartCount}}")) > self.restarts_before, 60)
        self.wait_serving(name)

    def stop(self, name):
        docker("stop", "-t", "30", self.container(name))
        return int(self.inspect(name, "{{.State.ExitCode}}"))

    def start(self, name):
        docker("start", self.container(name))
        self.wait_serving(name)

    def pids(self):
        return {key: int(self.inspect(key, "{{.State.Pid}}"))
                for name in NAMES for key in self.copies_of(name)}

    def sql(self, name, query):
        out = docker("exec", self.container("postgres"), "sh", "-c",
                     'PGPASSWORD="$POSTGRES_PASSWORD" exec psql -h 127.0.0.1 -U postgres -qtAX '
                     '-F "$2" -d "$0" -c "$1"', f"shop_{name}", query, "\t")
        return rows(out)

    def auth_key(self):
        target = self.work / "auth.key"
        docker("cp", f"{self.container('user')}:/var/lib/shopmesh/keys/auth.key", str(target))
        return target.read_bytes()

    def read_topics(self, groups):
        # The broker advertises its compose name, so the reader runs on the compose network.
        out = docker("run", "--rm", "--network", self.network,
                     "-v", f"{ROOT / 'tests' / 'chaos' / 'topics.py'}:/topics.py:ro",
                     self.reader_image, "python3", "/topics.py", "kafka:9092", *groups)
        return json.loads(out.splitlines()[-1])

    def pause_broker(self):
        docker("pause", self.container("kafka"))
        self.broker_paused = True

    def resume_broker(self):
        docker("unpause", self.container("kafka"))
        self.broker_paused = False

    def stop_postgres(self):
        self.postgres_stopped = True
        docker("stop", "-t", "30", self.container("postgres"))

    def start_postgres(self):
        docker("start", self.container("postgres"))
        self.postgres_stopped = False

    def slow_inventory(self):
        # Frozen: connections are accepted by the kernel and nothing answers.
        docker("pause", self.container("inventory"))
        self.paused = True

    def address(self, container):
        return docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}',
                      container, check=False)

    def partition_inventory(self):
        docker("network", "disconnect", "-f", self.network, self.container("inventory"))
        self.disconnected = True

    def heal_inventory(self):
        if self.paused:
            docker("unpause", self.container("inventory"))
            self.paused = False
        if self.disconnected:
            docker("network", "connect", "--alias", self.service("inventory"), self.network,
                   self.container("inventory"))
            self.disconnected = False

    can_move = True

    def move(self, name):
        """Stops the container and starts it again on another address, as a recreated
        container would come back: placeholder containers take free addresses until
        one holds the old one. Returns (old address, new address)."""
        container = self.container(name)
        old = self.address(container)
        docker("stop", "-t", "30", container)
        holders = []
        try:
            for _ in range(16):
                holders.append(docker("run", "-d", "--network", self.network, "--label",
                                      f"com.docker.compose.project={self.project}",
                                      self.base_image, "sleep", "300"))
                if self.address(holders[-1]) == old:
                    break
            docker("start", container)
        finally:
            if holders:
                docker("rm", "-f", *holders, check=False)
        return old, self.address(container)

    @contextlib.contextmanager
    def flood_gateway(self, per_sec, burst):
        """A second gateway container from the same image and settings, with its own limits."""
        flood, port = self.extra_gateway({"RATE_LIMIT_PER_SEC": per_sec, "RATE_LIMIT_BURST": burst,
                                          "OTEL_EXPORTER_OTLP_ENDPOINT": ""})
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            docker("rm", "-f", flood, check=False)

    def close(self):
        """Undoes any fault a failed scenario left in place (KEEP_STACK keeps the stack)."""
        for key in list(self.frozen):
            self.thaw(key)
        for k in range(1, self.copies):
            docker("rm", "-f", self.containers[f"gateway#{k}"], check=False)
        self.heal_inventory()
        if self.broker_paused:
            self.resume_broker()
        if self.postgres_stopped:
            self.start_postgres()
