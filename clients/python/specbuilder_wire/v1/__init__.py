"""Generated protobuf code for ``specbuilder.v1``, from ``protos/specbuilder/v1/`` (``make proto``).

``spec_pb2`` is the spec language on the wire; ``specbuilder.proto`` (in the core) converts it
to and from ``ModelSpec``. Nothing here imports torch.
"""
