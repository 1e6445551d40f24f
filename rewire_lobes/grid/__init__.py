"""The grid runner: the paper's experiment (rewire, then every task, then the analysis) as
one resumable command, ``utils/run_grid.py``.

``cells`` says what the cells are (commands, folders, pass-through options), ``records``
when one is finished, ``launchers`` how one is started (local process or submitit job),
``runner`` runs them in stages with a small pool, ``progress`` prints and records it.
"""
