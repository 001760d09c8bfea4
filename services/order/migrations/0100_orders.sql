-- The CreateOrder saga's state: an order is written PENDING before stock is
-- reserved, and becomes CONFIRMED or REJECTED in one transaction with its event.
CREATE TABLE orders (
    order_id           UUID        PRIMARY KEY,
    user_id            UUID        NOT NULL,
    -- The client's idempotency key, unique per user; NULL when none was sent.
    request_id         TEXT,
    status             TEXT        NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled')),
    currency_code      TEXT,
    total_minor        BIGINT,
    rejection_reason   TEXT        NOT NULL DEFAULT '',
    unavailable_skus   TEXT[]      NOT NULL DEFAULT '{}',
    recovery_attempts  INTEGER     NOT NULL DEFAULT 0,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, request_id)
);

CREATE INDEX orders_pending_by_age ON orders (updated_at) WHERE status = 'pending';
CREATE INDEX orders_by_user ON orders (user_id, order_id DESC);

CREATE TABLE order_lines (
    order_id         UUID   NOT NULL REFERENCES orders (order_id),
    sku              TEXT   NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    -- Set from inventory's prices when the order is confirmed.
    currency_code    TEXT,
    unit_price_minor BIGINT,
    PRIMARY KEY (order_id, sku)
);
