"""Operations: audit, DLQ redrive, reindex and export, for the CLI and the notebooks."""
