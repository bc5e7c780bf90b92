"""What runs inside a Serve replica: model archives, handlers, the batcher, wire protocols."""
