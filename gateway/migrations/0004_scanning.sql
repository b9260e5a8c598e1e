-- Stock-take counts from count-mode scanners: units counted per sku since the count began.
CREATE TABLE stock_counts (
    sku        TEXT PRIMARY KEY,
    counted    INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
