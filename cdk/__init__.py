"""The CDK app of dicom-pipeline: one stack that composes one construct per concern.

``cdk`` may import :mod:`pipeline` (names, the table's shape, the workflow file); it never
imports ``lambdas`` code, which it only bundles.
"""

import os

# jsii starts Node when aws_cdk is first imported; Node 20 works but prints a banner on
# every run. A default only: a caller's own setting wins.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
