-- Stock is counted in four buckets that always add up (the conservation invariant):
--   initial_stock + adjusted = available + reserved + sold
-- and none of them is ever negative. The database enforces both.
CREATE TABLE products (
    sku              TEXT        PRIMARY KEY,
    name             TEXT        NOT NULL,
    description      TEXT        NOT NULL DEFAULT '',
    currency_code    TEXT        NOT NULL,
    unit_price_minor BIGINT      NOT NULL CHECK (unit_price_minor >= 0),
    initial_stock    BIGINT      NOT NULL CHECK (initial_stock >= 0),
    adjusted         BIGINT      NOT NULL DEFAULT 0,
    available        BIGINT      NOT NULL CHECK (available >= 0),
    reserved         BIGINT      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold             BIGINT      NOT NULL DEFAULT 0 CHECK (sold >= 0),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT stock_is_conserved CHECK (initial_stock + adjusted = available + reserved + sold)
);

-- One row per applied AdjustStock request: a retry with the same request_id is recognised.
CREATE TABLE stock_adjustments (
    request_id TEXT        PRIMARY KEY,
    sku        TEXT        NOT NULL REFERENCES products (sku),
    delta      BIGINT      NOT NULL,
    reason     TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A reservation is keyed by the order it holds stock for.
CREATE TABLE reservations (
    order_id   TEXT        PRIMARY KEY,
    status     TEXT        NOT NULL CHECK (status IN ('held', 'committed', 'released', 'expired', 'returned')),
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX reservations_held_by_expiry ON reservations (expires_at) WHERE status = 'held';

CREATE TABLE reservation_lines (
    order_id         TEXT   NOT NULL REFERENCES reservations (order_id),
    sku              TEXT   NOT NULL REFERENCES products (sku),
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    currency_code    TEXT   NOT NULL,
    unit_price_minor BIGINT NOT NULL,
    PRIMARY KEY (order_id, sku)
);
