-- The last events head office acknowledged, for the status page and `GET /api/events` (the outbox
-- forgets an event at its PUBACK). Kept to the newest few hundred by outbox.delete().
CREATE TABLE recent_events (
    seq  INTEGER PRIMARY KEY,
    id   TEXT NOT NULL,
    kind TEXT NOT NULL,
    at   TEXT NOT NULL,
    data TEXT NOT NULL
);
