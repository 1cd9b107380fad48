"""SMTP AUTH: reading credentials (sasl), throttling failures, and credential backends.

Backends are ordinary plugins implementing the `authenticate` hook; `[auth] backends`
names which of the shipped ones (`file`, `upstream`) to register, in order.
"""
