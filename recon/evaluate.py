"""`python -m recon.evaluate`: see recon.cli.evaluate."""
import sys

from recon.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
