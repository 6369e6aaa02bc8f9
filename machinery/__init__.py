"""The course's machinery: everything students never need to read, one module per role.

`helpers.py` (at the repository root) is the course's teaching code; this package holds what it
stands on and what stands on it. The layers, lowest first: a module imports only from its own
layer or below, so there is no import cycle (tests/test_layout.py checks both):

    basics                     where files live, class names, errors, smoke mode, the device
    dataset, recipes, fast_path, checkpoint_file, photos, figures, networks
    resume, tensorboard_log, colab   exact resume; reading TensorBoard runs back; Colab and Drive
    --- helpers.py: what the notebooks teach: data, networks, the loop, prediction, checkpoints ---
    engine, tensorboard_panels the course's runner: recipes trained with helpers' loop, plus
                               resume, mixed precision, one-cycle; the TensorBoard run summary
    runs, bench                a recipe trained and tested end to end; the speed benchmark
    cli                        `python helpers.py train | evaluate | bench`
    tools                      instructor tools: `python -m machinery.tools --help`

`import helpers` loads the layers below it and nothing above.
"""
