"""Pretraining methods: each one file (views, modules, loss) registered under its config name."""
