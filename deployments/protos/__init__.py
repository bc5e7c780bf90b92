"""Open Inference Protocol V2 over gRPC: the .proto and the code grpcio-tools generates from it."""
