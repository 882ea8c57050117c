"""`python -m launcher ...` runs the `launch` command (useful where the console script is not on PATH)."""

from launcher.cli import main

if __name__ == "__main__":
    main()
