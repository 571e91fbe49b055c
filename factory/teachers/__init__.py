"""Teacher backends (one file each) and the machinery they share."""
