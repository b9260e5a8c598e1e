-- A per-sku minimum (from stock.set): available falling below it raises one replenishment alert.
ALTER TABLE stock ADD COLUMN min_stock INTEGER;
