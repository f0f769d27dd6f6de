"""The CLI's gRPC clients: those of core/clients.py (addresses, credentials, retries)."""

from slmops.core.clients import STUBS, address, call, close, read_stack, stack_file, stream, stub

__all__ = ["STUBS", "address", "call", "close", "read_stack", "stack_file", "stream", "stub"]
