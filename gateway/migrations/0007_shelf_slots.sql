-- Shelf slots set by head office (`shelf.set`); they add to and override [[shelves]] in the config.
CREATE TABLE shelf_slots (
    sensor        TEXT NOT NULL,
    sku           TEXT NOT NULL,
    unit_weight_g REAL NOT NULL,
    tare_g        REAL NOT NULL,
    capacity      INTEGER NOT NULL,
    low           INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL,
    PRIMARY KEY (sensor, sku)
);
