"""Small network helpers shared by the CLI, the benchmarks and the tests."""
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (tests and benchmarks use it to avoid clashes)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
