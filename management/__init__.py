"""The management layer: maps model requests onto Serve application configs."""
