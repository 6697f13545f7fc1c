"""Train one configuration (or a Hydra multirun sweep with -m). All logic lives in adamp_repro.train.run.

python scripts/train.py optimizer=adamp model=resnet18 dataset=cifar10
python scripts/train.py -m optimizer=sgd,sgdp,adam,adamp seed=0,1,2
"""

import hydra
from omegaconf import DictConfig

from adamp_repro.train import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = run(cfg)
    return summary.get("final_eval_top1")


if __name__ == "__main__":
    main()
