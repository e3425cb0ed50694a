"""The `dallmi` command line."""
