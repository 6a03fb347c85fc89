"""Discovery: finding certificates where they are used (network endpoints, files, clouds)."""
