"""The project's commands: each module's `main` is an `nme-<name>` console script, and
`python tools/<name>.py` (the checkout's front end) runs the same function.

Commands that run the checkout's configs or launch scripts (sweep,
fault_injection, accelerator_check, toy_landscape) find them under
`CHECKOUT`, the folder that holds this package in a source checkout (an
editable install, as requirements.txt makes).
"""

import os

from nme_train.cli import CHECKOUT, import_config_module


def checkout_module(relative_path: str):
    """The module of a file of the checkout (e.g. "configs/paper/common.py"), by its path."""
    name = "_checkout_" + os.path.splitext(relative_path)[0].replace("/", "_")
    return import_config_module(os.path.join(CHECKOUT, relative_path), "checkout", name,
                                needs_get_config=False)
