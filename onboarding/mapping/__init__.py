"""Mapping: the data profile a map run finds, the versioned mapping people finish, and its pages."""
