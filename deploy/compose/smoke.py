#!/usr/bin/env python3
"""The compose smoke suite: what a person does first against `docker compose up`.

    smoke.py readme   the README's REST and grpcurl blocks, run as written, with their
                      output checked; then an order through the gateway whose events
                      the user and inventory services are seen to consume
    smoke.py order    one more order through the gateway, confirmed and consumed
                      (after a container was killed and came back)
    smoke.py prometheus N
                      compose's Prometheus (127.0.0.1:9090) has loaded the
                      repository's rules and scrapes N shopmesh targets, all up

It talks to the published ports only (gateway 8080, gRPC 50051-50053 on 127.0.0.1).
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "http://127.0.0.1:8080"
PROMETHEUS = "http://127.0.0.1:9090"
GRPC = {"user": "127.0.0.1:50051", "inventory": "127.0.0.1:50052", "order": "127.0.0.1:50053"}
# The compose key job's client bundle (CA and the `you` certificate), for grpcurl.
PKI = ROOT / ".dev" / "compose-tls"


def fail(message):
    print(f"smoke: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def http(method, path, body=None, token=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(GATEWAY + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def expect(status, body, want, what):
    if status != want:
        fail(f"{what}: HTTP {status}, expected {want}: {body}")
    return body


def eventually(what, check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)


def readme_block(after):
    readme = (ROOT / "README.md").read_text()
    rest = readme.split(after, 1)[1]
    return rest.split("```sh", 1)[1].split("```", 1)[0]


def run_readme():
    script = "\n".join(
        readme_block(anchor)
        for anchor in ("Against `make dev` or `docker compose up`:",
                       "With `make dev` or `docker compose up` running:",
                       "A whole order, as Ada")
    )
    # Compose's key job puts the CA and the client certificate in .dev/compose-tls.
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env={**os.environ, "PKI": str(PKI)})
    if done.returncode != 0:
        fail(f"README lines exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    for needle in ('"sku": "MUG-001"', "shop.user.v1.UserService", '"SERVING"',
                   '"email": "ada@example.com"', '"ROLE_ADMIN"', "ORDER_STATUS_CONFIRMED",
                   "ORDER_STATUS_CANCELLED"):
        if needle not in done.stdout:
            fail(f"README output lacks {needle}:\n{done.stdout}")
    print("smoke: the README's curl and grpcurl blocks ran as written")


def grpc_health():
    for name, address in GRPC.items():
        done = subprocess.run(["grpcurl", "-cacert", str(PKI / "ca.pem"), "-cert", str(PKI / "you.crt"),
                               "-key", str(PKI / "you.key"), "-max-time", "5", address,
                               "grpc.health.v1.Health/Check"], capture_output=True, text=True)
        if '"SERVING"' not in done.stdout:
            fail(f"grpcurl {address} (the {name} service): {done.stdout}{done.stderr}")
    print("smoke: grpcurl sees every service port SERVING")


def place_order():
    """Registers a customer, orders through the gateway and waits for the events."""
    email = f"smoke-{uuid.uuid4().hex[:10]}@example.com"
    password = "correct horse battery"
    expect(*http("POST", "/v1/users", {"email": email, "password": password}), 201, "register")
    login = expect(*http("POST", "/v1/auth:login", {"email": email, "password": password}), 200,
                   "login")
    token, user_id = login["accessToken"], login["user"]["userId"]
    before = expect(*http("GET", "/v1/products/MUG-001"), 200, "product")["product"]

    created = expect(*http("POST", "/v1/orders", {"lines": [{"sku": "MUG-001", "quantity": 2}]},
                           token, {"Idempotency-Key": uuid.uuid4().hex}), 201, "create order")
    order = created["order"]
    if order["status"] != "ORDER_STATUS_CONFIRMED":
        fail(f"order not confirmed: {order}")

    # OrderConfirmed consumed by inventory (stock sold) and by the user service (figures).
    def sold():
        product = http("GET", "/v1/products/MUG-001")[1]["product"]
        return int(product["sold"]) >= int(before["sold"]) + 2 and product

    eventually("inventory consuming OrderConfirmed (MUG-001 sold +2)", sold)

    def counted():
        user = http("GET", f"/v1/users/{user_id}", token=token)[1].get("user", {})
        return int(user.get("stats", {}).get("orderCount", 0)) == 1 and user

    eventually("the user service counting the confirmed order", counted)
    print(f"smoke: order {order['orderId']} confirmed through the gateway; "
          "inventory and user services consumed its event")


def prometheus(expected):
    """The rules file loaded whole, and every copy found and scraped."""
    def api(path):
        with urllib.request.urlopen(PROMETHEUS + path, timeout=10) as reply:
            return json.load(reply)["data"]

    rules = sum(len(group["rules"]) for group in api("/api/v1/rules")["groups"])
    with open(ROOT / "deploy" / "prometheus" / "rules.yml") as f:
        written = sum(1 for line in f if line.lstrip().startswith(("- record:", "- alert:")))
    if rules != written:
        fail(f"Prometheus loaded {rules} rules, deploy/prometheus/rules.yml has {written}")

    def all_up():
        targets = [t for t in api("/api/v1/targets")["activeTargets"] if t["labels"]["job"] == "shopmesh"]
        up = [t for t in targets if t["health"] == "up"]
        return len(targets) == expected and len(up) == expected and targets

    targets = eventually(f"{expected} shopmesh targets, all up", all_up, timeout=60)
    print(f"smoke: Prometheus loaded {rules} rules and scrapes {len(targets)} targets, all up: "
          + ", ".join(sorted(t["labels"].get("instance", "?") for t in targets)))


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "readme"
    if what == "prometheus":
        prometheus(int(sys.argv[2]))
        return
    grpc_health()
    if what == "readme":
        status, report = http("GET", "/readyz")
        expect(status, report, 200, "gateway /readyz")
        if set(report.get("backends", {}).values()) != {"SERVING"}:
            raise SystemExit(f"gateway /readyz: a backend is not serving: {report}")
        run_readme()
    place_order()


if __name__ == "__main__":
    main()
