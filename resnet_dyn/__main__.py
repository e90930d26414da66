"""``python -m resnet_dyn`` is ``resnet-dyn``."""

from resnet_dyn.cli.train import main

if __name__ == "__main__":
    main()
