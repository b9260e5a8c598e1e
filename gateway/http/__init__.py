"""The technician's view (contract.md §4): the status page, the read-only JSON API and `/metrics`."""
