"""`python -m recon.cache`: see recon.cli.cache."""
import sys

from recon.cli.cache import main

if __name__ == "__main__":
    sys.exit(main())
