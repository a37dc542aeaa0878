"""Train an image classifier with AdaAct on DeepSpeed, from a YAML recipe in ``configs/``.

The same script runs under every launcher; the recipe fixes the global batch (2048 for
the paper's runs), and the world size only changes micro-batch and accumulation.

One node, 8 GPUs, DeepSpeed launcher::

    deepspeed --num_gpus 8 launch/train_imagenet.py --config a2_resnet50.yaml \
        --set data.root=/data/imagenet-wds

Several nodes, DeepSpeed launcher (``hostfile`` lines: ``node1 slots=8``)::

    deepspeed --hostfile hostfile --master_addr node1 --master_port 29500 \
        launch/train_imagenet.py --config a2_resnet101 --set data.root=/data/imagenet-wds

torchrun, 2 nodes x 8 GPUs (run on each node, ``--node_rank`` 0 and 1)::

    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --master_addr node1 \
        --master_port 29500 launch/train_imagenet.py --config a2_vit_small \
        --set data.root=/data/imagenet-wds

Slurm, 2 nodes x 8 GPUs (one task per GPU; preemption sends SIGTERM -> checkpoint)::

    srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 --kill-on-bad-exit=1 \
        python launch/train_imagenet.py --config a2_resnet50 --set data.root=/data/imagenet-wds

The same as a batch job that checkpoints before its time limit and requeues itself
(``launch/torchrun_multinode.sh`` wraps the torchrun line; the image: ``docker/README.md``)::

    sbatch --nodes 2 launch/slurm_train.sbatch --config a2_resnet50 \
        --set data.root=/data/imagenet-wds

One process (CPU or one GPU), e.g. the demo on any machine::

    python launch/train_imagenet.py --config demo

The demo with 2 CPU ranks through the DeepSpeed launcher (what ``make demo`` runs)::

    deepspeed --num_gpus 2 launch/train_imagenet.py --config demo

Inspect the resolved config without training (``--set`` applies as usual)::

    python launch/train_imagenet.py --config a2_resnet50 --set optim.lr=2.0 --print-config

A new run in an existing ``run.output_dir`` resumes from its newest checkpoint.
Exit status: 0 done or cleanly stopped (SIGTERM), 1 failed (e.g. non-finite loss),
2 bad config. Redraw plots with ``python launch/plot_run.py runs/<name>``.
"""

import sys

from adaact_dist.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
