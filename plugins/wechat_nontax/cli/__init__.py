"""The unit's commands (`nontax migrate|load|status|...`), the console script of the package."""
