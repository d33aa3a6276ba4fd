"""One construct per concern; the stack (:mod:`cdk.stack`) composes them and wires grants."""
