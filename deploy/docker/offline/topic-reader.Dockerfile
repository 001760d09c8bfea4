# The invariant checker's topic reader for `make chaos-compose`: Python with
# confluent-kafka from PyPI (its wheel carries a librdkafka that speaks to tansu;
# Debian's older one fails tansu's ApiVersions answer). It runs
# tests/chaos/topics.py, mounted rather than copied, on the compose network,
# where the broker's advertised name resolves. PyPI is reached the way this
# machine reaches it, so the image trusts the machine's CA bundle (images.sh).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG CONFLUENT_KAFKA_VERSION=2.16.1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN PIP_CERT=/etc/ssl/certs/ca-certificates.crt pip3 install --no-cache-dir \
        --break-system-packages "confluent-kafka==${CONFLUENT_KAFKA_VERSION}"
USER 10001:10001
