"""The ingestion workflow: S3 events, the batch step the parse Lambda runs, the metadata
table's shape, DLQ messages, and the workflow definition ``ingest.asl.json``."""
