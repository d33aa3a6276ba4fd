"""Physical names that are unique per stack instance, for resources that outlive their stack.

A retained resource (log groups, the database's log groups, and so on) stays after a teardown;
a fixed name would then make the next deployment of the same stack, or a second environment
that derived the same name, fail with "already exists". CloudFormation names most resources
itself; where a name must be known before the resource exists (the log groups RDS writes to
are named after the instance identifier, and Step Functions log groups should be under
``/aws/vendedlogs/``), the name carries :func:`stack_instance_suffix`.
"""

from __future__ import annotations

import aws_cdk as cdk

__all__ = ["stack_instance_suffix"]


def stack_instance_suffix() -> str:
    """12 hex digits of the stack's ID, resolved by CloudFormation at deploy time.

    The stack ID (``arn:…:stack/<name>/<uuid>``) gets a new UUID every time CloudFormation
    creates the stack, so a redeploy after a teardown gets new names while every update of a
    stack keeps the same ones. The first two groups of the UUID are taken: they vary between
    stacks whether CloudFormation's UUIDs are time-based or random (a time-based UUID's last
    group can be a constant host identifier).

    Examples
    --------
    >>> import aws_cdk as cdk
    >>> stack = cdk.Stack()
    >>> stack.resolve(stack_instance_suffix())["Fn::Join"][0]
    ''
    """
    uuid = cdk.Fn.select(2, cdk.Fn.split("/", cdk.Aws.STACK_ID))
    groups = cdk.Fn.split("-", uuid)
    return cdk.Fn.join("", [cdk.Fn.select(0, groups), cdk.Fn.select(1, groups)])
