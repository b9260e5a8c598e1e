-- Click & collect, e-reservation and ship-from-store orders, and their lines.
-- status: reserved | ready | collected | cancelled | expired
CREATE TABLE orders (
    order_id    TEXT PRIMARY KEY,
    mode        TEXT NOT NULL,
    status      TEXT NOT NULL,
    customer    TEXT,
    expires_ms  INTEGER,
    deadline_ms INTEGER,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX orders_open ON orders (status, expires_ms);

CREATE TABLE order_lines (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    sku      TEXT NOT NULL,
    qty      INTEGER NOT NULL,
    reserved INTEGER NOT NULL,
    picked   INTEGER NOT NULL DEFAULT 0,
    location TEXT,
    PRIMARY KEY (order_id, sku)
);
