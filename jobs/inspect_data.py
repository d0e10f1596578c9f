"""inspect job: statistics and sanity pictures of prepared sweep shards.

Example:
    PYTHONPATH=. python jobs/inspect_data.py --sweeps s3://bucket/afov/sweeps --dataroot /data/nuscenes --out figs/

Prints keyframes, scenes, points per sweep and the label histogram; with --out writes, for the
first --num-keyframes keyframes, one PNG per camera (LiDAR points projected onto the image,
coloured by depth) and a bird's-eye-view PNG coloured by label, plus stats.json.
"""

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweeps", required=True,
                   help="sweeps folder URI written by prepare (<out>/sweeps), local or s3://")
    p.add_argument("--dataroot", default=None,
                   help="raw dataset root (local or s3://) holding the camera images named in the shards; "
                        "without it the projections are drawn on grey canvases")
    p.add_argument("--out", default=None, help="folder URI for the PNGs and stats.json (no figures without it)")
    p.add_argument("--num-keyframes", type=int, default=1, help="how many keyframes to draw (default 1)")
    p.add_argument("--json", action="store_true", help="print the stats as JSON instead of a table")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from afov_ray.datasets.inspect import format_stats, inspect_sweeps

    stats = inspect_sweeps(args.sweeps, dataroot=args.dataroot, out=args.out, num_keyframes=args.num_keyframes)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    for f in stats["figures"]:
        print("wrote", f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
