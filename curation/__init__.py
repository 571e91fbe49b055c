"""Curation stages, human review and the versioned dataset store."""
