"""The local stack: the whole ingestion path on one machine, without an AWS account.

moto emulates S3, SQS, DynamoDB, Lambda and Step Functions (executing the *same* ASL file as
AWS, with the same substitutions); the real Lambda handler runs in process; a pipe emulator
plays EventBridge Pipes between the ingest queue and the state machine.
"""

from pipeline.local.stack import LocalStack, StackInfo

__all__ = ["LocalStack", "StackInfo"]
