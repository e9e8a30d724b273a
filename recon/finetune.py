"""`python -m recon.finetune`: see recon.cli.finetune."""
import sys

from recon.cli.finetune import main

if __name__ == "__main__":
    sys.exit(main())
