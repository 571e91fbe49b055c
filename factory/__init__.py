"""Teachers and generation tasks: seeds in, raw generation shards out."""
