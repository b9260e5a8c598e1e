-- Core schema: products and prices, stock and its ledger, the outbox, the inbox, devices.
-- Times are integer milliseconds since the epoch (UTC); money is integer minor units.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE products (
    sku               TEXT PRIMARY KEY,
    gtin              TEXT,
    name              TEXT NOT NULL DEFAULT '',
    currency          TEXT NOT NULL,
    price_minor       INTEGER NOT NULL,
    promo_price_minor INTEGER,
    promo_until_ms    INTEGER,
    net_quantity      REAL,
    net_unit          TEXT,
    version           INTEGER NOT NULL,
    updated_ms        INTEGER NOT NULL
);
CREATE INDEX products_by_gtin ON products (gtin) WHERE gtin IS NOT NULL;

-- Prices that take effect at valid_from; applied (and deleted) by the scheduler at that instant.
CREATE TABLE price_schedule (
    sku           TEXT NOT NULL,
    version       INTEGER NOT NULL,
    valid_from_ms INTEGER NOT NULL,
    item          TEXT NOT NULL,
    PRIMARY KEY (sku, version)
);
CREATE INDEX price_schedule_due ON price_schedule (valid_from_ms);

CREATE TABLE stock (
    sku        TEXT PRIMARY KEY,
    on_hand    INTEGER NOT NULL DEFAULT 0,
    reserved   INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    version    INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL
);

CREATE TABLE stock_ledger (
    id      INTEGER PRIMARY KEY,
    sku     TEXT NOT NULL,
    delta   INTEGER NOT NULL,
    on_hand INTEGER NOT NULL,
    reason  TEXT NOT NULL,
    ref     TEXT,
    at_ms   INTEGER NOT NULL
);
CREATE INDEX stock_ledger_by_sku ON stock_ledger (sku, id);

-- Events waiting for the broker's PUBACK. AUTOINCREMENT keeps seq rising across restarts
-- even when every row has been delivered and deleted; seq is the rowid, so a rolled-back
-- event leaves no gap. The envelope is assembled from these columns at publish time.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    at         TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);

-- Command ids already answered: a command seen twice is answered "duplicate".
CREATE TABLE inbox (
    command_id  TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    status      TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE INDEX inbox_by_time ON inbox (received_ms);

CREATE TABLE devices (
    id       TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    status   TEXT NOT NULL,
    detail   TEXT,
    since_ms INTEGER NOT NULL
);
