"""Retrieval methods: pure functions over embedding arrays (no model calls, no I/O)."""
