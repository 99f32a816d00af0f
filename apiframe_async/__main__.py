"""`python -m apiframe_async`: the `apiframe` command line."""

from apiframe_async._cli import main

main()
