"""Generation tasks: records in, teacher requests out, generations back into records."""
