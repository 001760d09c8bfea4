# The invariant checker's topic reader for `make chaos-compose`: Python and
# confluent-kafka from Debian's packages. It runs scripts/chaos_topics.py (mounted,
# not copied) on the compose network, where the broker's advertised name resolves.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-confluent-kafka \
    && rm -rf /var/lib/apt/lists/*
USER 10001:10001
