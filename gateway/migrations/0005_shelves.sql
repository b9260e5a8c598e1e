-- The last stable state of each shelf slot watched by a sensor.
CREATE TABLE shelf_state (
    sensor     TEXT NOT NULL,
    sku        TEXT NOT NULL,
    units      INTEGER NOT NULL,
    level      TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (sensor, sku)
);
