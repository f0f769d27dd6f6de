"""Generated gRPC contracts; see protos/slmops/v1."""
