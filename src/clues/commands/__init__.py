"""CLI command groups: each module parses its options and calls the library; no logic lives here."""
