"""AWS: a client factory (``client``) and one small module per service.

Only these modules import boto3. Each function does one thing, names what it touches,
and turns "already exists" / "already gone" into ordinary return values so callers can
be idempotent without catching botocore exceptions.
"""
