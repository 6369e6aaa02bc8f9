"""The course's machinery: everything students never need to read, split by role.

`helpers.py` (at the repository root) is the course's teaching code; this package holds what it
stands on and what stands on it. The layers, lowest first -- a module imports only from layers
below its own, and nothing below `helpers` imports it (tests/test_layout.py checks this):

    basics                      paths, class names, errors, smoke mode, the machine line
    dataset, recipes, fast_path, checkpoint_file, photos, figures
    resume, tensorboard_log     (on checkpoint_file / figures)
    -- helpers.py: data, networks, the loop, prediction, checkpoints --
    runs                        a recipe trained end to end (the command line's `train`)
    cli                         `python helpers.py train | evaluate | bench`
    tools                       instructor tools: `python -m machinery.tools --help`
"""
