-- The first outcome of each command (status, counts, errors as JSON), so that a command head office
-- sends again with a known id is answered `duplicate` with what happened the first time.
ALTER TABLE inbox ADD COLUMN outcome TEXT;
