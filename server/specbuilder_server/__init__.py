"""specbuilder's gRPC service: a thin translator from protobuf to the core library."""
