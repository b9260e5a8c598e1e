-- The print queue: a job's bytes are rendered when it is queued; it prints once, in order per printer.
-- state: queued | printing (bytes being written) | printed | failed
CREATE TABLE print_jobs (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    printer    TEXT NOT NULL,
    document   TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'queued',
    bytes      BLOB NOT NULL,
    error      TEXT,
    ref        TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX print_jobs_queue ON print_jobs (printer, state, seq);
