"""The sandbox keeps its state in memory; it has no database tables."""
