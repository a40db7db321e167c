"""AWS: a client factory (``client``) and one small module per service.

Only these modules import boto3 and botocore. Each function does one thing, names what it
touches, and turns "already exists" / "already gone" into ordinary return values so callers
can be idempotent; any other failure leaves it as ``client.AwsError`` (with a transient
flag), never as a botocore exception.
"""
