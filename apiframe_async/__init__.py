"""apiframe-async."""
