"""specbuilder on the wire, without torch: what the core, the server and the client all import.

- ``v1``: the protobuf code generated from ``protos/specbuilder/v1/`` (``make proto``).
"""
