"""`python -m recon.cache list | clear`: the cached latency tables that ``TargetSpeedup`` reuses."""
from __future__ import annotations

import argparse
import json

from recon.bench.latency import default_cache_path, read_cache
from recon.io.atomic import exclusive


def _describe(key: str, table) -> str:
    backend, _, threads, processor, method, geometry, _, shape, layout, dtype, device = json.loads(key)
    load = "?" if table.load is None else f"{table.load:.1f}"
    return (f"{method:8} {geometry} input {'x'.join(map(str, shape))} {layout} {dtype} {device} ({backend}, "
            f"{threads} threads, {processor}): dense {1e3 * table.dense:.3f} ms, {len(table.ranks)} ranks, "
            f"spread {100 * table.spread:.0f}%, load {load}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recon.cache", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("action", choices=("list", "clear"), help="list the tables, or delete the cache file")
    args = parser.parse_args(argv)
    path = default_cache_path()
    if not path.is_file():
        print(f"no latency cache at {path}")
        return 0
    if args.action == "clear":
        with exclusive(path) as target:
            count = len(read_cache(target))
            target.unlink()
        print(f"removed {path} ({count} table(s))")
        return 0
    tables = read_cache(path)
    print(f"{path}: {len(tables)} table(s)")
    for key, table in tables.items():
        try:
            print("  " + _describe(key, table))
        except (ValueError, TypeError):
            print(f"  {key}: dense {1e3 * table.dense:.3f} ms")
    return 0
