# The tansu broker (Kafka protocol) standing in for the Kafka image where no image
# can be pulled; images.sh puts the installed binary into the build context.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY tansu /usr/local/bin/tansu
USER 10001:10001
EXPOSE 9092
ENTRYPOINT ["/usr/local/bin/tansu"]
