# Prometheus from Debian's package, for machines that can pull no image. It keeps the
# official image's interface that docker-compose.yml uses: the server as the
# entrypoint, its flags as the command, data under /prometheus.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown prometheus:prometheus /prometheus
WORKDIR /prometheus
# hadolint ignore=DL3066
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
