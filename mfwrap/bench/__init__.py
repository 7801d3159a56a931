"""The benchmark suite: the seed paper's experiments (and two it lacks) as one resumable command.

    mfwrap bench EXPERIMENT|all --level quick|medium|full [--seeds 0 1 2] [--backbone schnet] [--jobs 2]
    mfwrap bench report

:mod:`mfwrap.bench.grid` says what each experiment runs at each level and under which protocol,
with the methods of :mod:`mfwrap.bench.methods` and the backbones of :mod:`mfwrap.bench.backbones`;
:mod:`mfwrap.bench.runner` runs it (a directory per run, skip what is done, resume what was
killed, record failures) and writes each run's :class:`mfwrap.bench.result.RunResult`;
:mod:`mfwrap.bench.report` aggregates the results over seeds into
``benchmarks/results/suite/<level>/<experiment>.{json,md,png}`` and :mod:`mfwrap.bench.claims` checks the
seed paper's claims against them.
"""
