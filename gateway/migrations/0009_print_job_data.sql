-- A print job keeps its checked document data and is rendered by the printer's worker when it prints
-- (jobs queued by earlier versions keep their rendered bytes; new ones store x'' there).
ALTER TABLE print_jobs ADD COLUMN data TEXT;
