"""Head office: `store-gateway hq ingest` lands every store's events in PostgreSQL, exactly once.

events.py  one broker message read and checked into an `IncomingEvent` (or a named problem)
gaps.py    seq bookkeeping per store: last seq, gaps opened, split and closed (no database)
schema.py  the PostgreSQL schema (contract.md §5) and its numbered migrations
writer.py  one batch in one PostgreSQL transaction
sources.py durable consumption: MQTT persistent session, RabbitMQ quorum queue, NATS JetStream
worker.py  the loop: take a batch, commit it, then acknowledge it; progress on stderr

Installed with the extra `store-gateway[hq]` (psycopg, aio-pika, nats-py); the store daemon never
imports this package.
"""
