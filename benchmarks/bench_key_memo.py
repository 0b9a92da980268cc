"""How much memory the key memo keeps: RSS growth after keying many queries, then dropping them.

Cases, each in a fresh process so one cannot inherit another's heap:

* ``big``: 1,000 distinct queries of 256 KiB each (the memo must not keep them);
* ``many``: 300,000 distinct small queries (the memo must stay within its byte budget).

The queries are built, keyed and dropped; RSS is sampled every 1,000 queries.
The peak above the baseline bounds what the memo ever held; what is left after
a garbage collection is what it keeps. Run:
``.venv/bin/python benchmarks/bench_key_memo.py`` (``--case big --quiet`` prints the MiB only).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys

from datapipelines.keys import MEMO_BYTES, MEMO_ENTRY_BYTES, key_for

MIB = 2**20
CASES = {
    "big": "1,000 distinct 256 KiB queries",
    "many": "300,000 distinct small queries",
}


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; elsewhere the peak, an upper bound)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def big_query(number: int) -> dict[str, object]:
    return {"id": number, "payload": f"{number:08d}" + "x" * (256 * 1024 - 8)}


def small_query(number: int) -> dict[str, object]:
    return {"id": number, "region": "EUW", "queue": "ranked"}


def growth_mib(case: str) -> tuple[float, float]:
    """(peak, kept): RSS above the baseline while keying ``case``'s queries, and after."""
    make, count = {"big": (big_query, 1_000), "many": (small_query, 300_000)}[case]
    key_for("Warmup", {"id": 0})  # imports and first-call allocations are not the memo's
    gc.collect()
    before = peak = rss_bytes()
    for number in range(count):
        key_for("Document", make(number))
        if number % 1_000 == 999:
            peak = max(peak, rss_bytes())
    gc.collect()
    return (peak - before) / MIB, (rss_bytes() - before) / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process")
    parser.add_argument("--quiet", action="store_true", help="print only the growth in MiB")
    args = parser.parse_args()
    if args.case:
        peak, kept = growth_mib(args.case)
        title = CASES[args.case]
        print(f"{peak:.1f} {kept:.1f}" if args.quiet else f"{title}: peak +{peak:.1f}, kept +{kept:.1f} MiB")
        return
    print(
        f"key memo budget: {MEMO_BYTES / MIB:.0f} MiB per memo (two memos); "
        f"queries over {MEMO_ENTRY_BYTES} bytes are not memoised"
    )
    print(f"{'case':<34} {'RSS peak':>12} {'RSS kept':>12}")
    for case, title in CASES.items():
        done = subprocess.run(
            [sys.executable, __file__, "--case", case, "--quiet"],
            capture_output=True,
            text=True,
            check=True,
        )
        peak, kept = map(float, done.stdout.split())
        print(f"{title:<34} {peak:>+8.1f} MiB {kept:>+8.1f} MiB")
    print(f"command: {sys.executable} {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
