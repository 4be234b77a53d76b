"""`python -m selva`: the same command line as the `selva` console script (see `selva.cli`)."""

from selva.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
