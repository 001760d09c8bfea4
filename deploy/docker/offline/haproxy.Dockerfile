# HAProxy from Debian's package, for machines that can pull no image. It keeps the
# official image's interface that docker-compose.yml uses: the configuration at
# /usr/local/etc/haproxy/haproxy.cfg, run in the foreground as the haproxy user.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /usr/local/etc/haproxy
# hadolint ignore=DL3066
USER haproxy
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
