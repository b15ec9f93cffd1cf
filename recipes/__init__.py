"""The pipelines as plain functions of a typed config (:class:`recipes.config.RecipeConfig`).

``prepare`` / ``train`` / ``evaluate`` (:mod:`recipes.base`), ``codebook`` (:mod:`recipes.codebook`),
``adapter`` / ``evaluate_methods`` (:mod:`recipes.adaptation`), ``main_job`` (:mod:`recipes.main`).
Each returns a small result and prints nothing (logging and tqdm only); the CLI prints the summaries.
Imports flow ``cli → serving, recipes → llm_cloud, codebook → recsys``; the recipes validate what they are
asked for (model names: :func:`recipes.base.check_models`; methods: :func:`recipes.adaptation.check_methods`).
"""
