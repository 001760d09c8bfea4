#!/usr/bin/env python3
"""Writes shopmesh's Prometheus rules from the SLOs and alerts below, in the two
forms they are used in, and the dashboard for Grafana's sidecar:

    rules.yml                              compose's Prometheus (and promtool's tests)
    k8s/components/monitoring/
      prometheus-rule.yaml                 the same groups as a PrometheusRule
      dashboard.yaml                       compose's Grafana dashboard as a ConfigMap

    generate.py          writes them
    generate.py --check  fails when any is not what this file writes (make lint)

The burn-rate rules are the same few lines for every window and SLO, so they are
made here rather than written out by hand; everything else is written as it reads.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yml"
MONITORING = HERE.parent / "k8s" / "components" / "monitoring"
DASHBOARD = HERE.parent / "compose" / "grafana" / "dashboards" / "shopmesh.json"

# gRPC codes that are the server's fault: they spend an availability budget. A
# refusal the caller caused (invalid, not found, out of stock, rate limited) does not.
SERVER_ERRORS = "Unknown|DeadlineExceeded|Unimplemented|Internal|Unavailable|DataLoss"
CREATE_ORDER = 'rpc_method="CreateOrder"'

# name, what it promises, objective, bad events and all events over a window `{w}`.
SLOS = [
    ("create_order_availability", "CreateOrder calls end without a server-side error", 0.995,
     f'sum(rate(rpc_server_requests_total{{{CREATE_ORDER},grpc_code=~"{SERVER_ERRORS}"}}[{{w}}]))',
     f"sum(rate(rpc_server_requests_total{{{CREATE_ORDER}}}[{{w}}]))"),
    ("create_order_latency", "CreateOrder calls answer within 500 ms", 0.99,
     f"(sum(rate(rpc_server_duration_seconds_count{{{CREATE_ORDER}}}[{{w}}]))"
     f' - sum(rate(rpc_server_duration_seconds_bucket{{{CREATE_ORDER},le="0.5"}}[{{w}}])))',
     f"sum(rate(rpc_server_duration_seconds_count{{{CREATE_ORDER}}}[{{w}}]))"),
]

# (severity, burn rate, long window, short window): the multi-window,
# multi-burn-rate table for a 30-day budget.
BURNS = [
    ("page", 14.4, "1h", "5m"),   # 2 % of the budget in an hour
    ("page", 6, "6h", "30m"),     # 5 % in six hours
    ("ticket", 3, "1d", "2h"),    # 10 % in a day
    ("ticket", 1, "3d", "6h"),    # all of it by the end of the window
]
WINDOWS = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]

HEADER = """\
# shopmesh's Prometheus rules, written by deploy/prometheus/generate.py (edit that,
# then run it): the RED figures the dashboard reads, the CreateOrder SLOs with their
# error-budget burn alerts, and alerts for what the mesh cannot heal itself.
# compose's Prometheus loads this file as it is; scripts/render-prometheus-rule.sh
# wraps it into the overlays' PrometheusRule. Unit tests: rules.test.yml
# (`promtool test rules`, in `make lint`). What to do when each alert fires:
# docs/operations.md#alerts.
#
# SLOs, over 30 days:
{slos}
# Burn-rate alerts: a long window says the budget is really going, a short one (a
# twelfth of it) that it still is, so an alert also stops soon after the cause.
{burns}
"""

RED = """\
  - name: shopmesh-red
    rules:
      # What the dashboard (deploy/compose/grafana/dashboards/shopmesh.json) reads.
      - record: shopmesh:rpc_requests:rate1m
        expr: sum by (service, rpc_method, grpc_code) (rate(rpc_server_requests_total[1m]))
      - record: shopmesh:rpc_server_errors:rate1m
        expr: sum by (service, rpc_method) (rate(rpc_server_requests_total{grpc_code=~"%s"}[1m]))
      - record: shopmesh:rpc_duration_seconds_bucket:rate1m
        expr: sum by (service, le) (rate(rpc_server_duration_seconds_bucket[1m]))
      - record: shopmesh:rpc_duration_seconds:p99_1m
        expr: histogram_quantile(0.99, sum by (service, rpc_method, le) (rate(rpc_server_duration_seconds_bucket[1m])))
      - record: shopmesh:gateway_requests:rate1m
        expr: sum by (route, status) (rate(gateway_http_requests_total[1m]))
      - record: shopmesh:gateway_duration_seconds_bucket:rate1m
        expr: sum by (route, le) (rate(gateway_http_request_duration_seconds_bucket[1m]))
""" % SERVER_ERRORS

# Alerts on what no retry or copy absorbs. Each names its runbook entry.
MESH = """\
  - name: shopmesh-mesh
    rules:
      - alert: ServiceDown
        expr: up{job="shopmesh"} == 0
        for: 1m
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.instance }} has not answered a scrape for a minute"
          runbook: docs/operations.md#servicedown
      - alert: ServiceNotServing
        expr: shop_up == 0
        for: 1m
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.service }} at {{ $labels.instance }} has said NOT_SERVING for a minute"
          runbook: docs/operations.md#servicenotserving
      - alert: ProcessRestarting
        expr: changes(process_start_time_seconds[15m]) >= 2
        labels:
          severity: ticket
        annotations:
          summary: "{{ $labels.service }} at {{ $labels.instance }} started {{ $value }} times in 15 minutes"
          runbook: docs/operations.md#processrestarting
      - alert: OutboxBacklogOld
        expr: max by (service) (shop_outbox_oldest_unsent_age_seconds) > 30
        for: 1m
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.service }} has held an unpublished event for over 30 s"
          runbook: docs/operations.md#outboxbacklogold
      - alert: ConsumerLagging
        expr: sum by (consumer, topic) (shop_consumer_lag_messages) > 1000
        for: 5m
        labels:
          severity: ticket
        annotations:
          summary: "{{ $labels.consumer }} is over 1000 events behind on {{ $labels.topic }}"
          runbook: docs/operations.md#consumerlagging
      - alert: EventDeadLettered
        expr: sum by (consumer, topic) (increase(shop_consumer_events_total{outcome="dead_lettered"}[15m])) > 0
        labels:
          severity: ticket
        annotations:
          summary: "{{ $labels.consumer }} dead-lettered an event from {{ $labels.topic }}"
          runbook: docs/operations.md#eventdeadlettered
      - alert: GatewayServerErrors
        expr: >-
          sum(rate(gateway_http_requests_total{status=~"5.."}[5m]))
          / sum(rate(gateway_http_requests_total[5m])) > 0.05
        for: 5m
        labels:
          severity: page
        annotations:
          summary: "over 5 % of the gateway's answers are 5xx"
          runbook: docs/operations.md#gatewayservererrors
"""


def camel(name):
    return "".join(part.capitalize() for part in name.split("_"))


def slo_group(name, promise, objective, bad, total):
    budget = round(1 - objective, 6)
    lines = [f"  - name: shopmesh-slo-{name.replace('_', '-')}", "    rules:"]
    for w in WINDOWS:
        lines += [f"      - record: shopmesh:{name}:error_ratio_rate{w}",
                  f"        expr: {bad.replace('{w}', w)} / {total.replace('{w}', w)}"]
    for severity in ("page", "ticket"):
        conditions = [
            f"(shopmesh:{name}:error_ratio_rate{long} > {rate} * {budget}"
            f" and shopmesh:{name}:error_ratio_rate{short} > {rate} * {budget})"
            for sev, rate, long, short in BURNS if sev == severity]
        speed = "fast" if severity == "page" else "steadily"
        lines += [f"      - alert: {camel(name)}BudgetBurn",
                  "        expr: >-",
                  *(f"          {'or ' if i else ''}{c}" for i, c in enumerate(conditions)),
                  "        labels:",
                  f"          severity: {severity}",
                  f"          slo: {name}",
                  "        annotations:",
                  f'          summary: "the {name.replace("_", " ")} error budget is burning {speed}'
                  f' (SLO: {objective * 100:g} % of {promise}, 30 days)"',
                  f"          runbook: docs/operations.md#{camel(name).lower()}budgetburn"]
    return "\n".join(lines) + "\n"


def groups():
    return RED + "\n" + "\n".join(slo_group(*slo) for slo in SLOS) + "\n" + MESH


def indent(text, by):
    return "".join(" " * by + line if line.strip() else line for line in text.splitlines(True))


def rules_file():
    slos = "\n".join(f"#   {name}: {objective * 100:g} % of {promise}" for name, promise, objective, _, _ in SLOS)
    burns = "\n".join(f"#   {sev:<6} {rate:g}x over {long} and {short}" for sev, rate, long, short in BURNS)
    return HEADER.format(slos=slos, burns=burns) + "\ngroups:\n" + groups()


def prometheus_rule():
    return ("# Written by deploy/prometheus/generate.py from the rules in deploy/prometheus/rules.yml\n"
            "# (the same groups, for the Prometheus operator).\n"
            "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: shopmesh\n  namespace: shopmesh\n"
            "  labels:\n    app.kubernetes.io/part-of: shopmesh\nspec:\n  groups:\n" + indent(groups(), 2))


def dashboard():
    return ("# Written by deploy/prometheus/generate.py from compose's dashboard\n"
            "# (deploy/compose/grafana/dashboards/shopmesh.json), for Grafana's sidecar.\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shopmesh-dashboard\n  namespace: shopmesh\n"
            "  labels:\n    grafana_dashboard: \"1\"\n    app.kubernetes.io/part-of: shopmesh\n"
            "data:\n  shopmesh.json: |\n" + indent(DASHBOARD.read_text().rstrip("\n") + "\n", 4))


def main():
    outputs = {RULES: rules_file(), MONITORING / "prometheus-rule.yaml": prometheus_rule(),
               MONITORING / "dashboard.yaml": dashboard()}
    if sys.argv[1:] == ["--check"]:
        stale = [str(p.relative_to(HERE.parent.parent)) for p, text in outputs.items()
                 if not p.is_file() or p.read_text() != text]
        if stale:
            sys.exit(f"not what deploy/prometheus/generate.py writes (run it): {', '.join(stale)}")
        return
    for path, text in outputs.items():
        path.write_text(text)


if __name__ == "__main__":
    main()
