"""Results -> the papers' artefacts. ``collect`` reads a suite's run store into pandas tables,
``stats`` computes medians/IQMs/probabilities of improvement with bootstrap CIs, ``tables`` and
``claims`` build the papers' tables and one verdict per claim (numbers from ``paper_numbers.yaml``),
``figures`` draws learning curves, ``render`` writes report.html / report.pdf, and ``marl_eval``
exports marl-eval's JSON. Entry point: ``reports.render.render_report(suite_dir)``."""
