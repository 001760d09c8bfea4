# Redis from Debian's package, for machines that can pull no image. It keeps the
# official image's interface that docker-compose.yml uses: `redis-server` as the
# command with its arguments, data in /data, redis-cli for the healthcheck.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data \
    && chown redis:redis /data
WORKDIR /data
# The package creates the redis user with whatever id is free.
# hadolint ignore=DL3066
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
