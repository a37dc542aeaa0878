"""Write an image split as webdataset shards (thin wrapper over ``adaact-make-shards``).

    python launch/make_shards.py --src /data/ILSVRC2012/train --out /data/imagenet-wds \
        --split train --shard-size 1000 --workers 16 --seed 0
    python launch/make_shards.py --src /data/ILSVRC2012/val --out /data/imagenet-wds \
        --split val --labels /data/LOC_val_solution.csv \
        --classes /data/imagenet-wds/train/manifest.json
    python launch/make_shards.py --out /data/imagenet-wds --split train --verify

Re-run the same command to finish an interrupted run. See
``adaact_dist.data.shard_writer`` for the output layout.
"""

import sys

from adaact_dist.data.shard_writer import main

if __name__ == "__main__":
    sys.exit(main())
