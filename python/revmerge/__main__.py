"""``python -m revmerge ARGS…``: the command line, run by the installed package."""
import sys

from . import Error, UsageError, run


def main() -> int:
    try:
        sys.stdout.write(run(*sys.argv[1:]))
    except UsageError as e:
        print(f"revmerge: error: {e}", file=sys.stderr)
        return 2
    except Error as e:
        print(f"revmerge: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
