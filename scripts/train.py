"""Train one configuration (or a Hydra multirun sweep with -m): ``adamp_repro.cli.train`` (``adamp-train``).

python scripts/train.py optimizer=adamp model=resnet18 dataset=cifar10
python scripts/train.py -m optimizer=sgd,sgdp,adam,adamp seed=0,1,2

A refused value prints one line, ``error: ...``, and exits with status 2 (see adamp_repro.cli.train).
"""

from adamp_repro.cli.train import JobRefused, main

__all__ = ["JobRefused", "main"]

if __name__ == "__main__":
    main()
