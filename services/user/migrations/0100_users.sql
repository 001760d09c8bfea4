CREATE TABLE users (
    user_id       UUID        PRIMARY KEY,
    email         TEXT        NOT NULL UNIQUE,
    display_name  TEXT        NOT NULL DEFAULT '',
    password_hash TEXT        NOT NULL,
    role          TEXT        NOT NULL CHECK (role IN ('customer', 'admin')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per confirmed order, from the order service's events; a user's figures
-- are the sums over the rows that are not cancelled.
CREATE TABLE user_orders (
    order_id      TEXT        PRIMARY KEY,
    user_id       UUID        NOT NULL,
    currency_code TEXT        NOT NULL,
    amount_minor  BIGINT      NOT NULL,
    confirmed_at  TIMESTAMPTZ NOT NULL,
    cancelled_at  TIMESTAMPTZ
);

CREATE INDEX user_orders_by_user ON user_orders (user_id) WHERE cancelled_at IS NULL;
