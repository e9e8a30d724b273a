"""`python -m recon.export`: see recon.cli.export."""
import sys

from recon.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
