"""`python -m recon.fit`: see recon.cli.fit (compiled solvers are cached on disk between runs)."""
import sys

from recon.cli.common import enable_compilation_cache
from recon.cli.fit import main

if __name__ == "__main__":
    enable_compilation_cache()
    sys.exit(main())
