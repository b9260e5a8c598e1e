"""Printing: ESC/POS documents and the durable print queue."""
