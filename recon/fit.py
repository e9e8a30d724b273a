"""`python -m recon.fit`: see recon.cli.fit."""
import sys

from recon.cli.fit import main

if __name__ == "__main__":
    sys.exit(main())
