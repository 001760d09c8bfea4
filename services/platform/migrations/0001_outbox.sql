-- Events written in the same transaction as the state change they describe; the
-- relay publishes them in id order and stamps published_at after the broker
-- acknowledged them.
CREATE TABLE outbox_events (
    id            BIGSERIAL PRIMARY KEY,
    event_id      UUID        NOT NULL UNIQUE,
    topic         TEXT        NOT NULL,
    event_key     TEXT        NOT NULL,
    event_type    TEXT        NOT NULL,
    payload       BYTEA       NOT NULL,
    trace_context JSONB       NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ,
    attempts      INTEGER     NOT NULL DEFAULT 0,
    last_error    TEXT
);

CREATE INDEX outbox_events_unpublished ON outbox_events (id) WHERE published_at IS NULL;
