#!/usr/bin/env python3
"""Every record on shopmesh's event topics, for `make chaos`'s invariant checker.

Imported by run.py (through mesh.py) when the broker is reachable from this machine; run
as `topics.py BROKERS GROUP...` inside a container on the compose network
when it is not (the broker advertises its compose name), printing what `read`
returns as JSON.
"""

import json
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

def read(brokers, groups):
    """Every record, every dead letter and, for each consumer group, where it
    stands on each partition."""
    return {"records": read_topics(brokers, topics_ending(brokers, ".events")),
            "dead_letters": read_topics(brokers, topics_ending(brokers, ".dlq")),
            "groups": {g: committed(brokers, g) for g in groups}}


def topics_ending(brokers, suffix):
    """The broker's topics named `*<suffix>`: each package's `<package>.events`
    (the name the services derive from their events.proto) or the dead letters."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"chaos-check-{uuid.uuid4()}"})
    try:
        return sorted(t for t in consumer.list_topics(timeout=10).topics if t.endswith(suffix))
    finally:
        consumer.close()


def committed(brokers, group):
    """{"topic/partition": committed offset} of `group`, read without joining it
    (-1001 where it has committed nothing)."""
    topics = topics_ending(brokers, ".events")
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, p) for topic in topics
                      for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
        return {f"{tp.topic}/{tp.partition}": tp.offset
                for tp in consumer.committed(partitions, timeout=10)}
    finally:
        consumer.close()


def read_topics(brokers, topics):
    """(topic, partition, offset, key, headers) of every record, from the beginning.
    Reads past the high watermarks until nothing more arrives for 5 s, so a stale
    watermark cannot hide the last records."""
    records = []
    if not topics:
        return records
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"chaos-check-{uuid.uuid4()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        ends, assignment = {}, []
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                ends[(topic, p)] = high
                assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        consumer.assign(assignment)
        reached = {where: 0 for where in ends}
        deadline = time.monotonic() + 180
        last_record = time.monotonic()
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                caught_up = all(reached[w] >= ends[w] for w in ends)
                if caught_up and time.monotonic() - last_record > 5:
                    break
                continue
            last_record = time.monotonic()
            where = (message.topic(), message.partition())
            reached[where] = max(reached.get(where, 0), message.offset() + 1)
            headers = {k: (v or b"").decode() for k, v in (message.headers() or [])}
            records.append((message.topic(), message.partition(), message.offset(),
                            (message.key() or b"").decode(), headers))
        else:
            raise SystemExit(f"could not read the topics to their end: {reached} of {ends}")
    finally:
        consumer.close()
    return records


if __name__ == "__main__":
    print(json.dumps(read(sys.argv[1], sys.argv[2:])))
