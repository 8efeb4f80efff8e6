"""Collections: SQLite metadata, vector sets on disk, exact and ANN search over them."""
