-- Shelf labels: which label shows which sku, what it should show (wanted) and what it was last
-- confirmed to show. state: pending (to send) | sent (waiting for the station) | confirmed | failed.
CREATE TABLE labels (
    station           TEXT NOT NULL,
    label             TEXT NOT NULL,
    sku               TEXT NOT NULL,
    template          TEXT,
    width             INTEGER,
    height            INTEGER,
    colours           TEXT,
    state             TEXT NOT NULL DEFAULT 'pending',
    wanted_hash       TEXT,
    wanted_version    INTEGER,
    wanted_price      TEXT,
    confirmed_hash    TEXT,
    confirmed_version INTEGER,
    confirmed_price   TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    sent_ms           INTEGER,
    updated_ms        INTEGER NOT NULL,
    PRIMARY KEY (station, label)
);
CREATE INDEX labels_by_sku ON labels (sku);
CREATE INDEX labels_by_state ON labels (state, updated_ms);
