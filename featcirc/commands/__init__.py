"""The commands behind the CLI."""
